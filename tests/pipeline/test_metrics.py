"""Metrics: exact values from hand-built results (see conftest.make_result)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from pipeline import metrics
from traces.errors import PermtraceError


def _metric(summary: pl.DataFrame, policy: str, metric: str) -> dict:
    return summary.filter((pl.col("policy") == policy) & (pl.col("metric") == metric)).row(0, named=True)


def test_per_run_base_counters_and_cost_model_exactly(dataset):
    # GIVEN legacy trace a seed 0: 10 shootdowns at 4 CPUs (30 IPIs), 5 full + 5 ranged flushes,
    # 1 text_poke_bp batch with 6 sync-core IPIs
    row = metrics.per_run(dataset).filter(pl.col("run_id") == "legacy-a-4-0").collect().row(0, named=True)
    assert (row["shootdowns"], row["shootdown_ipis"], row["flush_tlb_all"], row["flush_tlb_kernel_range"]) == (10, 30, 5, 5)
    assert (row["module_loads"], row["bpf_loads"], row["shootdowns_module_load"], row["shootdowns_bpf_load"]) == (4, 6, 8, 2)
    # THEN cost = (10 + 3) rounds x 1000 + (30 + 6) IPIs x 200 + 5 ranged x 4 CPUs x 33 pages x 100
    #             + 5 full x 4 CPUs x 2000
    assert row["shootdown_cost_ns"] == 13 * 1000 + 36 * 200 + 5 * 4 * 33 * 100 + 5 * 4 * 2000


def test_cost_model_parameters_are_overridable():
    model = metrics.CostModel.from_pairs(["per_ipi_ns=300", "refill_ns=0"])
    assert (model.per_ipi_ns, model.refill_ns, model.round_ns) == (300.0, 0.0, 1000.0)
    with pytest.raises(PermtraceError, match="per_ipi_ns"):
        metrics.CostModel.from_pairs(["ipi=3"])
    with pytest.raises(PermtraceError, match="not a number"):
        metrics.CostModel.from_pairs(["per_ipi_ns=fast"])


def test_summary_sums_traces_per_seed_then_mean_and_t_interval(dataset):
    # GIVEN legacy seeds 0-2 with 10/11/12 shootdowns on each of 2 traces: fleet 20/22/24
    s = metrics.summarize(metrics.per_run(dataset)).collect()
    m = _metric(s, "legacy", "shootdowns")
    assert (m["mean"], m["std"], m["n"]) == (22.0, 2.0, 3)
    half = 4.303 * 2.0 / math.sqrt(3)  # t(0.975, 2 df)
    assert m["lo"] == pytest.approx(22 - half) and m["hi"] == pytest.approx(22 + half)
    # per-load: shootdowns charged to load ops / load events = 2n / 20 per seed
    assert _metric(s, "legacy", "shootdowns_per_load")["mean"] == pytest.approx(1.1)
    assert _metric(s, "legacy", "shootdowns_per_module_load")["mean"] == pytest.approx(9 / 4)
    assert _metric(s, "perm_alloc", "splits")["mean"] == pytest.approx(2 * (1 + 1 + 1) / 3)


def test_single_seed_interval_collapses_to_the_mean(tmp_path, make):
    out = make.dataset(tmp_path / "r", {"legacy": [7]}, traces=("a",))
    m = _metric(metrics.summarize(metrics.per_run(out)).collect(), "legacy", "shootdowns")
    assert (m["mean"], m["lo"], m["hi"], m["n"]) == (7.0, 7.0, 7.0, 1)


def test_per_load_metric_is_null_not_zero_without_loads(tmp_path, make):
    from pipeline import store
    store.write_run(tmp_path, make.row("r", "legacy"), make.result(module_loads=0, bpf_loads=0))
    s = metrics.summarize(metrics.per_run(tmp_path)).collect()
    assert _metric(s, "legacy", "shootdowns_per_module_load")["mean"] is None


def test_headline_change_in_percent_against_baseline(dataset):
    s = metrics.summarize(metrics.per_run(dataset)).collect()
    h = metrics.headline(s, "legacy")
    assert h["policy"].to_list() == ["legacy", "perm_alloc"]
    pa = h.filter(pl.col("policy") == "perm_alloc").row(0, named=True)
    assert pa["shootdowns"] == 8.0
    assert pa["shootdowns vs legacy %"] == pytest.approx((8 / 22 - 1) * 100)
    assert "nr_cpus" not in h.columns  # one CPU count: no column for it


def test_pick_baseline():
    assert metrics.pick_baseline(["perm_alloc", "legacy"]) == "legacy"
    assert metrics.pick_baseline(["b", "a"]) == "a"
    with pytest.raises(PermtraceError, match="--baseline"):
        metrics.pick_baseline(["a"], "legacy")


def test_parameter_variants_of_one_policy_are_not_averaged_together(tmp_path, make):
    from pipeline import store
    store.write_run(tmp_path, make.row("r1", "perm_alloc", params='{"unmapped_cache":true}'), make.result(shootdowns=2))
    store.write_run(tmp_path, make.row("r2", "perm_alloc", params='{"unmapped_cache":false}'), make.result(shootdowns=9))
    labels = metrics.runs(tmp_path).collect()["policy"].sort().to_list()
    assert labels == ['perm_alloc {"unmapped_cache":false}', 'perm_alloc {"unmapped_cache":true}']


def test_cpu_sweep_keeps_cpu_counts_apart(tmp_path, make):
    out = make.dataset(tmp_path / "r", {"legacy": [10]}, traces=("a",), cpus=(2, 64))
    s = metrics.summarize(metrics.per_run(out)).collect().filter(pl.col("metric") == "shootdown_ipis")
    assert dict(s.select("nr_cpus", "mean").rows()) == {2: 10.0, 64: 630.0}


def test_per_op_distribution_rows(dataset):
    po = metrics.per_op(dataset).filter(pl.col("run_id") == "legacy-a-4-0").collect()
    row = po.filter(pl.col("op") == "module_load").row(0, named=True)
    assert (row["events"], row["shootdowns"], row["shootdowns_per_event"]) == (4, 8, 2.0)


def test_metrics_are_expressions_without_map_elements():
    source = Path(metrics.__file__).read_text()
    assert "map_elements" not in source.replace("No ``map_elements``", "")
    assert all(isinstance(e, pl.Expr) for e in [*metrics.BASE.values(), *metrics.DERIVED.values()])


def test_directmap_timeline_reconstructs_2m_and_1g_from_4k_and_level3_splits(tmp_path, make):
    # GIVEN 2 GiB mapped by two 1G pages; one is split to 2M (L3 split), then one 2M to 4K (L2 split)
    import numpy as np

    from pipeline import store
    r = make.result(regions=1024)
    r.counters |= {"DirectMap4k": 2048, "DirectMap2M": 1046528, "DirectMap1G": 1048576,
                   "direct_map_level3_splits": 1, "direct_map_level3_collapses": 0}
    r.timeline = {"event_index": np.array([0, 1, 2]), "ts_ns": np.array([0, 5, 9], np.uint64),
                  "DirectMap4k": np.array([0, 0, 2048]), "direct_map_level3_splits": np.array([0, 1, 1])}
    store.write_run(tmp_path, make.row("r", "legacy"), r)
    # WHEN the composition over time is asked for THEN 1G and 2M follow exactly
    d = metrics.directmap_timeline(tmp_path).collect()
    series = {c: d.filter(pl.col("counter") == c)["value"].to_list() for c in ("DirectMap4k", "DirectMap2M", "DirectMap1G")}
    assert series == {"DirectMap4k": [0, 0, 2048], "DirectMap2M": [0, 1048576, 1046528],
                      "DirectMap1G": [2097152, 1048576, 1048576]}
