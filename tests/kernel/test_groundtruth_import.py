"""Every shared ground-truth trace imports, validates, and reproduces REPORT.md's counts;
check-model on them (the emulator's agreement with real kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.check_model import DEFAULT_SEEDS
from traces.importers.ftrace import import_ftrace
from traces.validate import validate_trace

HOST = "traces/ebpf_n100_k4096_stack"
GUEST_61 = ("results/guest/serial_6.1_4level_smp2.log.gz", "results/guest/serial_6.1_4level_smp2_cpa.log.gz")
QEMU_LOGS = (
    "qemu-5.10-6.12/results/serial_5.10_modules_smp2.log.gz",
    "qemu-5.10-6.12/results/serial_6.1_bpf.log.gz",
    "qemu-5.10-6.12/results/serial_6.12_bpf.log.gz",
    "qemu-5.10-6.12/results/serial_6.12_modules_smp2.log.gz",
    "qemu-7.2-aged/results/serial_510_aged_all.log.gz",
    "qemu-7.2-aged/results/serial_510_aged_thp.log.gz",
    "qemu-7.2-aged/results/serial_510_fresh_8G.log.gz",
    "qemu-7.2-aged/results/serial_72_bpf.log.gz",
    "qemu-7.2-aged/results/serial_72_mod_smp2.log.gz",
    "qemu-7.2-aged/results/serial_72_mod_smp2_stack.log.gz",
)


@pytest.fixture(scope="module")
def imported(groundtruth_dir: Path, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """Import every shared trace once: name -> (trace path, summary)."""
    out = tmp_path_factory.mktemp("gt")
    # The 2.1 MB program of the k300000 run: its size from the same program's run-1 JSON
    # (only the "progs" entry is used: snapshots of another run would be wrong here).
    progs = out / "k300000_progs.json"
    progs.write_text(json.dumps(json.loads(
        (groundtruth_dir / "results/bpf_run1/ebpf_n1_k300000.json").read_text())["progs"][:1]))
    jobs = {"host_n100": (groundtruth_dir / f"{HOST}.trace.gz", groundtruth_dir / f"{HOST}.json"),
            "host_n1_k300000": (groundtruth_dir / "traces/ebpf_n1_k300000_stack.trace.gz", progs)}
    jobs.update({Path(p).name.removesuffix(".log.gz"): (groundtruth_dir / p, None) for p in GUEST_61 + QEMU_LOGS})
    return {name: (out / f"{name}.parquet", import_ftrace(src, out / f"{name}.parquet", bpf_progs=bp))
            for name, (src, bp) in jobs.items()}


def test_every_shared_trace_imports_cleanly_and_validates(imported):
    for name, (path, summary) in imported.items():
        assert summary.n_malformed == 0, (name, summary.malformed[:3])
        assert summary.n_events > 0, name
        assert validate_trace(path) == [], name


def test_host_trace_reproduces_gt_bpf_json(imported, groundtruth_dir):
    # GIVEN gt_bpf.py's own summary of the same run
    case = json.loads((groundtruth_dir / f"{HOST}.json").read_text())
    phases = case["phases"]
    _, s = imported["host_n100"]
    # THEN the importer counts what gt_bpf.py counted: 100 programs of 28683 bytes, 300 plain
    # vmalloc areas, the flushes, purges that purged something, splits from the vmstat delta
    flushes = sum(p.get("csd:do_flush_tlb_all", 0) for p in phases.values())
    assert s.totals["flush_tlb_all"] == flushes == 7
    assert s.totals["vmap_purge"] == 3
    assert s.totals["direct_map_level2_splits"] == case["delta_total"]["direct_map_level2_splits"] == 3
    assert s.totals["exec_area_alloc"] == phases["load"]["alloc_vmap_area[exec]"] == 1
    assert s.used["alloc_vmap_area"] == 301
    assert s.metadata["DirectMap4k"] == str(case["snap_before"]["DirectMap4k"])


def test_host_big_program_gets_its_size(imported):
    path, s = imported["host_n1_k300000"]
    import polars as pl
    loads = pl.read_parquet(path).filter(pl.col("op") == "bpf_prog_load")
    assert loads["size"].to_list() == [2100011]
    # REPORT.md: a >2 MiB image costs 1 purge at free, 1 flush per split + 1 CPA flush at load
    assert s.totals["vmap_purge"] == 3 and s.totals["flush_tlb_kernel_range"] == 1


def test_guest_6_1_reproduces_report(imported):
    # REPORT.md, 46 modules on 6.1 smp2: 240 do_flush_tlb_all at load (+ 41 unloads), 38 ranged,
    # 78 __cpa_flush_tlb, 10 level-2 splits, 2588 text_poke_bp batches and 7764 do_sync_core at
    # load; the log's 6 earlier batches are the tracer arming itself before "GT start"
    _, s = imported["serial_6.1_4level_smp2"]
    assert s.totals["flush_tlb_all"] == 240 + 41
    assert s.totals["flush_tlb_kernel_range"] == 38
    assert s.totals["cpa_flush"] == 78
    assert s.totals["direct_map_level2_splits"] == 10
    assert s.used["text_poke_bp_batch"] == 2588 and s.totals["sync_core"] == 7764
    assert s.used["module_load"] == 46 and s.used["module_free"] == 41
    assert (s.metadata["kernel_release"], s.metadata["nr_cpus"]) == ("6.1.0-56-amd64", "2")


#: Seeds per check (check-model's default, a 95% prediction interval for the splits).
SEEDS = DEFAULT_SEEDS


def _xfail(reason: str):
    return pytest.mark.xfail(raises=AssertionError, strict=True, reason="emulator vs kernel: " + reason)


#: (imported trace, policy): every shared trace with the policy of its kernel.  A mark names
#: the discrepancy check-model shows (totals; observed vs predicted over seeds 0..SEEDS-1).
#: The vmalloc VA layout at the start comes with the trace (the importer's vmalloc_busy: gaps no
#: traced area took, and areas allocated before tracing that the trace frees, at their addresses);
#: thread stacks are THREAD_ALIGN-aligned; areas queued lazily during the tracer's setup are
#: replayed where they lay; events that began while a load or an init free was in progress are
#: its ``concurrent`` span.  What remains is below, by name and number.
CHECKS = [
    pytest.param("host_n100", "linux-6.18", id="host-6.18-ebpf-n100"),
    pytest.param("host_n1_k300000", "linux-6.18", id="host-6.18-ebpf-2.1MB"),
    pytest.param("serial_6.1_4level_smp2", "linux-6.1", id="guest-6.1-modules"),
    pytest.param("serial_6.1_4level_smp2_cpa", "linux-6.1", id="guest-6.1-modules-cpa"),
    pytest.param("serial_6.1_bpf", "linux-6.1", id="guest-6.1-bpf"),
    pytest.param("serial_6.12_bpf", "linux-6.12", id="guest-6.12-bpf"),
    pytest.param("serial_5.10_modules_smp2", "linux-5.10", id="guest-5.10-modules"),
    pytest.param("serial_6.12_modules_smp2", "linux-6.12", id="guest-6.12-modules"),
    pytest.param("serial_510_fresh_8G", "linux-5.10", id="guest-5.10-bpf-fresh"),
    pytest.param("serial_510_aged_all", "linux-5.10", id="guest-5.10-bpf-aged"),
    pytest.param("serial_72_bpf", "linux-7.2", id="guest-7.2-bpf"),
    pytest.param("serial_510_aged_thp", "linux-5.10", id="guest-5.10-bpf-aged-thp"),
    pytest.param("serial_72_mod_smp2", "linux-7.2", id="guest-7.2-modules", marks=_xfail(
        "sync_core exact; flush_tlb_all 987 vs 983, flush_tlb_kernel_range 45 vs 48, vmap_purges 263 vs "
        "262: the tracer's setup purged 42 areas into the 6.9+ vmap node pools and "
        "only those the trace takes again are known (vmap_pools); a pool of under 4 areas never decays "
        "on 6.16+, so the unknown rest stays and shifts which areas each decay gives back (a recording "
        "by groundtruth qemu drains the pools first: exact on 41 modules).  L2 splits 20 vs 10..14: 7.2's "
        "splits vary more between identical runs than the model's over seeds (20, 17 and 14 for these 41 "
        "modules in three runs)")),
    pytest.param("serial_72_mod_smp2_stack", "linux-7.2", id="guest-7.2-modules-stack", marks=_xfail(
        "vmap_purges and sync_core exact; flush_tlb_all 987 vs 986, flush_tlb_kernel_range 36 vs 37 "
        "(four unloads and a load flush ranged where the kernel flushed all, or the reverse): the vmap "
        "node pools' unknown start; L2 splits 17 vs 10..14, as in guest-7.2-modules")),
]


@pytest.mark.parametrize("name, policy", CHECKS)
def test_check_model_on_shared_ground_truth(imported, name, policy):
    from pipeline.check_model import check_model

    result = check_model(imported[name][0], policy, seeds=SEEDS)
    assert result.ok, "\n" + result.table()
