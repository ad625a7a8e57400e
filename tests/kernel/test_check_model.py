"""check-model's comparison rules, exact small cases (no replay)."""

from __future__ import annotations

import polars as pl

from pipeline.check_model import compare

KINDS = {"flush_tlb_all", "flush_tlb_kernel_range", "cpa_flush", "vmap_purge", "sync_core",
         "direct_map_level2_splits", "direct_map_level3_splits"}


def observed(rows):
    return pl.DataFrame(rows, schema={"ts_ns": pl.UInt64, "kind": pl.String, "value": pl.Int64,
                                      "op": pl.String, "event_row": pl.Int64}, orient="row")


def row(frame, counter, op="all"):
    r = frame.filter((pl.col("counter") == counter) & (pl.col("op") == op))
    return r.row(0, named=True) if r.height else None


def seed(load_flush_all, splits, purges=1):
    counters = {"emu_flush_tlb_all": load_flush_all, "direct_map_level2_splits": splits,
                "emu_vmap_purges": purges}
    return {None: dict(counters), "bpf_prog_load": dict(counters)}


def test_flushes_are_compared_given_the_splits():
    # GIVEN a kernel that split 3 times and sent 5 full flushes (3 splits + purge + CPA)
    obs = observed([(1, "flush_tlb_all", 5, "bpf_prog_load", 0), (1, "vmap_purge", 1, "bpf_prog_load", 0),
                    (2, "direct_map_level2_splits", 3, None, None)])
    # WHEN the model, on two seeds, splits 1 and 6 times and flushes 1 + 2 and 6 + 2 times
    frame = compare(obs, KINDS, [seed(3, 1), seed(8, 6)])
    # THEN flushes corrected by the split difference match exactly, and 3 splits lie in 1..6
    f = row(frame, "emu_flush_tlb_all")
    assert (f["predicted_min"], f["predicted_max"], f["observed"], f["deterministic"], f["ok"]) == (5, 5, 5, True, True)
    s = row(frame, "direct_map_level2_splits")
    assert (s["predicted_min"], s["predicted_max"], s["ok"], s["deterministic"]) == (1, 6, True, False)
    assert row(frame, "emu_vmap_purges")["ok"] is True


def test_an_extra_flush_fails_and_splits_outside_the_range_fail():
    # GIVEN one full flush more than splits + purge + CPA explain
    frame = compare(observed([(1, "flush_tlb_all", 6, "bpf_prog_load", 0),
                              (2, "direct_map_level2_splits", 3, None, None)]), KINDS, [seed(3, 1), seed(8, 6)])
    # THEN the flush row fails, and the purge the model predicts but the kernel did not do fails
    assert row(frame, "emu_flush_tlb_all")["ok"] is False
    assert row(frame, "emu_vmap_purges")["ok"] is False
    # GIVEN 9 observed splits, more than any seed predicts THEN the split row fails
    frame = compare(observed([(2, "direct_map_level2_splits", 9, None, None)]), KINDS, [seed(3, 1), seed(8, 6)])
    assert row(frame, "direct_map_level2_splits")["ok"] is False


def test_unobservable_kinds_are_not_checked():
    # GIVEN a source that could not see splits (no vmstat readings)
    obs = observed([(1, "flush_tlb_all", 5, "bpf_prog_load", 0)])
    frame = compare(obs, KINDS - {"direct_map_level2_splits", "direct_map_level3_splits"},
                    [seed(3, 1), seed(8, 6)])
    # THEN splits show no observation and the split-dependent flush count is not checked
    assert row(frame, "direct_map_level2_splits")["observed"] is None
    assert row(frame, "direct_map_level2_splits")["ok"] is None
    assert row(frame, "emu_flush_tlb_all")["ok"] is None


def test_sync_core_rounds_become_ipis():
    obs = observed([(1, "sync_core", 3, "text_patch", 0)])
    frame = compare(obs, KINDS, [{None: {"emu_sync_core_ipis": 9}, "text_patch": {"emu_sync_core_ipis": 9}}],
                    nr_cpus=4)
    assert row(frame, "emu_sync_core_ipis", "text_patch")["observed"] == 9
    assert row(frame, "emu_sync_core_ipis")["ok"] is True


def test_report_section_reads_stored_runs(tmp_path, groundtruth_dir):
    # GIVEN a result set with the shared host trace replayed under linux-6.18 (2 seeds)
    from pipeline.check_model import report_section
    from pipeline.cli import main
    from traces.importers.ftrace import import_ftrace

    gt = groundtruth_dir / "traces"
    trace = tmp_path / "host.parquet"
    import_ftrace(gt / "ebpf_n100_k4096_stack.trace.gz", trace, bpf_progs=gt / "ebpf_n100_k4096_stack.json")
    assert report_section(tmp_path / "none") is None
    assert main(["replay", str(trace), "--policy", "linux-6.18", "--seeds", "2", "--jobs", "1",
                 "--out", str(tmp_path / "res")]) == 0
    # WHEN the report asks for the model-check section
    title, frame = report_section(tmp_path / "res")
    # THEN it is check-model's comparison from the stored counters (warmup subtracted)
    assert "observed" in title.lower()
    total = frame.filter((pl.col("counter") == "emu_vmap_purges") & (pl.col("op") == "all")).row(0, named=True)
    assert (total["trace"], total["policy"], total["seeds"], total["observed"], total["ok"]) == (
        "host", "linux-6.18", 2, 3, True)


def test_a_reset_flush_is_full_or_ranged_by_placement():
    # GIVEN a kernel whose init-free reset found nothing queued (another CPU's purge took the area)
    # and flushed its pages' far-apart direct-map range in full
    obs = observed([(1, "flush_tlb_all", 1, "module_init_free", 0),
                    (1, "vm_reset_flush_all", 1, "module_init_free", 0)])
    # WHEN the model's pages lay close together: a ranged flush instead
    model = {"emu_flush_tlb_kernel_range": 1, "emu_vm_reset_flush_all": 0}
    frame = compare(obs, KINDS | {"vm_reset_flush_all"}, [{None: model, "module_init_free": model}])
    # THEN both flush counts are corrected by the placement difference and match; the placement
    # counter itself is shown, not checked
    assert row(frame, "emu_flush_tlb_all")["ok"] is True
    assert row(frame, "emu_flush_tlb_kernel_range")["ok"] is True
    r = row(frame, "emu_vm_reset_flush_all")
    assert (r["observed"], r["predicted_max"], r["ok"]) == (1, 0, None)
    # AND a source that could not tell (6.18 tracepoints) gets no correction
    frame = compare(obs, KINDS, [{None: model, "module_init_free": model}])
    assert row(frame, "emu_flush_tlb_kernel_range")["ok"] is False
