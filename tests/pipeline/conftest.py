"""Fixtures for pipeline tests: hand-built replay results written into result datasets.

These exercise the store, metrics, compare, export and report code against
results whose every counter is known, independent of the emulator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emulator.result import WASTE_CAUSES, ReplayResult
from pipeline import store


def make_result(*, shootdowns: int = 10, splits: int = 2, nr_cpus: int = 4, regions: int = 64,
                module_loads: int = 4, bpf_loads: int = 6, seed: int = 0) -> ReplayResult:
    """A ReplayResult with chosen headline counters (all others derived simply from them)."""
    rng = np.random.default_rng(seed)
    full = shootdowns // 2
    counters = {
        "emu_shootdowns": shootdowns, "emu_shootdown_ipis": shootdowns * (nr_cpus - 1),
        "emu_flush_tlb_all": full, "emu_flush_tlb_kernel_range": shootdowns - full, "emu_cpa_flush": 0,
        "emu_local_flush": 3, "emu_sync_core_ipis": 6, "emu_text_poke_bp_batches": 1,
        "direct_map_level2_splits": splits, "direct_map_level3_splits": 0,
        "direct_map_level2_collapses": 0, "direct_map_level3_collapses": 0,
        "DirectMap4k": splits * 2048, "DirectMap2M": (regions - splits) * 2048, "DirectMap1G": 0,
        "emu_waste_bytes": 4 * 1024, "emu_waste_peak_bytes": 4 * 2048, "emu_waste_mean_bytes": 4 * 1500,
        "emu_text_tlb_entries_4k": 20, "emu_text_tlb_entries_2m": 1,
    }
    for cause in WASTE_CAUSES:
        counters |= {f"emu_waste_bytes_{cause}": 1024, f"emu_waste_peak_bytes_{cause}": 2048,
                     f"emu_waste_mean_bytes_{cause}": 1500}
    load_shootdowns = min(shootdowns, 2)
    per_op = {
        "module_load": {"events": module_loads, "emu_shootdowns": shootdowns - load_shootdowns,
                        "emu_shootdown_ipis": (shootdowns - load_shootdowns) * (nr_cpus - 1),
                        "direct_map_level2_splits": splits},
        "bpf_prog_load": {"events": bpf_loads, "emu_shootdowns": load_shootdowns,
                          "emu_shootdown_ipis": load_shootdowns * (nr_cpus - 1)},
        "vmalloc": {"events": 90},
    }
    n = 100
    index = np.linspace(0, n - 1, 8).astype(np.int64)
    timeline = {
        "event_index": index, "ts_ns": (index * 1_000_000).astype(np.uint64),
        "emu_shootdowns": np.linspace(0, shootdowns, 8).astype(np.int64),
        "direct_map_level2_splits": np.linspace(0, splits, 8).astype(np.int64),
        "DirectMap4k": np.linspace(0, splits * 2048, 8).astype(np.int64),
        "DirectMap2M": np.linspace(regions * 2048, (regions - splits) * 2048, 8).astype(np.int64),
        "DirectMap1G": np.zeros(8, np.int64),
        **{f"emu_waste_bytes_{c}": np.linspace(0, 1024, 8).astype(np.int64) for c in WASTE_CAUSES},
    }
    direct_map = np.ones(regions, np.uint8)
    direct_map[rng.choice(regions, splits, replace=False)] = 0
    return ReplayResult(counters, per_op, timeline, direct_map, n)


def run_row(run_id: str, policy: str, trace: str = "t", seed: int = 0, nr_cpus: int = 4,
            params: str = "{}") -> dict:
    return {"run_id": run_id, "trace": trace, "trace_path": f"/traces/{trace}.parquet", "trace_digest": "0" * 32,
            "policy": policy, "params": params, "seed": seed, "nr_cpus": nr_cpus, "mem_bytes": 128 << 20,
            "machine": "{}", "n_events": 100, "wall_s": 0.5, "version": "test"}


def write_dataset(out: Path, shootdowns: dict[str, list[int]], *, traces=("a", "b"), cpus=(4,)) -> Path:
    """policy -> shootdowns per seed; every trace and CPU count gets the same results."""
    for policy, per_seed in shootdowns.items():
        for trace in traces:
            for nr_cpus in cpus:
                for seed, n in enumerate(per_seed):
                    run_id = f"{policy}-{trace}-{nr_cpus}-{seed}"
                    store.write_run(out, run_row(run_id, policy, trace, seed, nr_cpus),
                                    make_result(shootdowns=n, splits=n // 3, nr_cpus=nr_cpus, seed=seed))
    return out


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """legacy: 10/11/12 shootdowns over seeds 0-2; perm_alloc: 3/4/5; traces a and b."""
    return write_dataset(tmp_path / "results", {"legacy": [10, 11, 12], "perm_alloc": [3, 4, 5]})


@pytest.fixture
def make():
    """The builders above, for tests: ``make.result(...)``, ``make.row(...)``, ``make.dataset(...)``."""
    from types import SimpleNamespace
    return SimpleNamespace(result=make_result, row=run_row, dataset=write_dataset)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """``permtrace demo`` run once per session (real synthetic traces, real emulator)."""
    from pipeline.cli import main

    out = tmp_path_factory.mktemp("demo") / "permtrace-demo"
    assert main(["demo", "--out", str(out)]) == 0
    return out
