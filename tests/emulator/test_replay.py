"""``emulator.replay``: what it returns, streaming, errors."""

from __future__ import annotations

import numpy as np
import pytest

from emulator import Machine, ReplayError, policies, replay
from emulator.result import LEVEL_1G, LEVEL_4K, WASTE_CAUSES
from traces.io import write_trace

M = Machine(nr_cpus=2, mem_bytes=4 << 30, kaslr=False)


def churn(trace, n=300):
    ev = []
    for i in range(n):
        ev += [("vmalloc", i, 40960), ("bpf_prog_load", 10_000 + i, 500)]
        if i >= 5:
            ev += [("vfree", i - 5, 0), ("bpf_prog_free", 10_000 + i - 5, 0)]
    return trace(ev)


def test_result_has_kernel_and_emu_counters_per_op_timeline_and_direct_map(trace):
    r = replay(churn(trace), policies.make("legacy"), M, timeline_points=10)
    c = r.counters
    for name in ("direct_map_level2_splits", "direct_map_level3_splits", "direct_map_level2_collapses",
                 "direct_map_level3_collapses", "DirectMap4k", "DirectMap2M", "DirectMap1G", "nr_tlb_remote_flush",
                 "nr_tlb_remote_flush_received", "emu_shootdowns", "emu_shootdown_ipis", "emu_flush_tlb_all",
                 "emu_flush_tlb_kernel_range", "emu_cpa_flush", "emu_local_flush", "emu_sync_core_ipis",
                 "emu_vmap_purges", "emu_text_tlb_entries_4k", "emu_text_tlb_entries_2m", "emu_waste_bytes",
                 "emu_waste_peak_bytes", "emu_waste_mean_bytes",
                 *(f"emu_waste_{kind}_{cause}" for kind in ("bytes", "peak_bytes", "mean_bytes") for cause in WASTE_CAUSES)):
        assert name in c, name
    assert c["emu_shootdowns"] == c["emu_flush_tlb_all"] + c["emu_flush_tlb_kernel_range"] + c["emu_cpa_flush"]
    assert c["emu_shootdown_ipis"] == c["emu_shootdowns"] * (M.nr_cpus - 1)
    # per-op totals add up to the counters, and count events
    assert sum(d["emu_shootdowns"] for d in r.per_op.values()) == c["emu_shootdowns"]
    assert r.per_op["bpf_prog_load"]["events"] == 300 and r.per_op["vfree"]["events"] == 295
    # timeline: sampled, monotone for cumulative counters, last sample = final state
    tl = r.timeline
    assert len(tl["event_index"]) == 10 and tl["event_index"][-1] == r.n_events - 1
    assert np.all(np.diff(tl["emu_shootdowns"]) >= 0) and tl["emu_shootdowns"][-1] == c["emu_shootdowns"]
    assert tl["DirectMap4k"][-1] == c["DirectMap4k"] and tl["ts_ns"].dtype == np.uint64
    assert all(len(v) == 10 for v in tl.values())
    # direct map state: one level per 2 MiB region, consistent with DirectMap*
    assert r.direct_map.dtype == np.uint8 and len(r.direct_map) == 2048
    assert (r.direct_map == LEVEL_4K).sum() * 2048 == c["DirectMap4k"]
    assert (r.direct_map == LEVEL_1G).sum() * 2048 == c["DirectMap1G"]
    # live text: 5 one-page programs still loaded
    assert c["emu_text_tlb_entries_4k"] == 5


def test_waste_live_peak_and_time_weighted_mean(trace):
    # one 4000-byte program alive for 1 ms of a 3 ms trace
    t = trace([("bpf_prog_load", 1, 4000), ("bpf_prog_free", 1, 0), ("vmalloc", 2, 10), ("vfree", 2, 0)])
    c = replay(t, policies.make("legacy"), M).counters
    rounding = 8192 - 4000                      # round_up(4000 + 8 + 128, 4K) = 2 pages
    assert c["emu_waste_peak_bytes_page_rounding"] == rounding and c["emu_waste_bytes_page_rounding"] == 0
    assert c["emu_waste_mean_bytes_page_rounding"] == rounding // 3   # alive 1 ms of 3 ms


def test_path_and_table_and_any_batch_size_give_the_same_result(trace, tmp_path):
    t = churn(trace, 100)
    path = write_trace(tmp_path / "t.parquet", t, {"nr_cpus": "2"})
    a = replay(t, policies.make("linux-6.1"), M, seed=4, timeline_points=7)
    b = replay(path, policies.make("linux-6.1"), M, seed=4, timeline_points=7, batch_size=33)
    assert a.counters == b.counters and a.per_op == b.per_op
    assert all(np.array_equal(a.timeline[k], b.timeline[k]) for k in a.timeline)


def test_a_policy_overriding_plain_vmalloc_sees_every_event_and_changes_nothing_else(trace):
    # GIVEN a policy that overrides vmalloc/vfree only to count them (the replay then dispatches
    # every plain event to it instead of serving runs of them in Vmalloc.run)
    from emulator.policies.legacy import Legacy

    class Counting(Legacy):
        def attach(self, k):
            super().attach(k)
            self.seen = 0

        def vmalloc(self, id, size):
            self.seen += 1
            super().vmalloc(id, size)

        def vfree(self, id):
            self.seen += 1
            super().vfree(id)

    t = churn(trace, 100)
    counting = Counting()
    a, b = replay(t, counting, M, seed=3), replay(t, policies.make("legacy"), M, seed=3)
    # THEN it saw every plain event and the results are the fast path's
    assert counting.seen == 100 + 95
    assert a.counters == b.counters and a.per_op == b.per_op
    # AND a fault in its path still names the event's row
    with pytest.raises(ReplayError, match="unknown vmalloc id 7") as e:
        replay(trace([("vmalloc", 1, 4096), ("vfree", 7, 0)]), Counting(), M)
    assert e.value.row == 1


def test_deferred_purge_is_charged_to_the_event_that_triggered_it(trace):
    # 2 CPUs: lazy_max_pages 16384; the fifth 4095-page vfree crosses it
    ev = [("vmalloc", i, 4095 * 4096) for i in range(5)] + [("vfree", i, 0) for i in range(5)]
    r = replay(trace(ev), policies.make("legacy"), M)
    assert r.per_op["vfree"]["emu_vmap_purges"] == 1 and r.per_op["vmalloc"]["emu_vmap_purges"] == 0


@pytest.mark.parametrize("events, what", [
    ([("vfree", 5, 0)], "unknown vmalloc id 5"),
    ([("vmalloc", 5, 1), ("vmalloc", 5, 1)], "already live"),
    ([("module_init_free", 9, 0)], "unknown module id 9"),
])
def test_trace_errors_name_row_time_op_and_id(trace, events, what):
    with pytest.raises(ReplayError, match=what) as e:
        replay(trace(events), policies.make("linux-6.18"), M)
    assert e.value.row == len(events) - 1 and e.value.ts_ns == len(events) * 1_000_000
    assert f"row {len(events) - 1} (ts_ns=" in str(e.value) and e.value.exit_code == 2


def test_out_of_module_address_space_is_a_replay_error(trace):
    ev = [("bpf_prog_load", i, 3 << 20) for i in range(400)]  # 3 MiB images, 1008 MiB module area
    with pytest.raises(ReplayError, match="out of modules address space") as e:
        replay(trace(ev), policies.make("linux-6.1"), Machine(nr_cpus=2, mem_bytes=8 << 30))
    assert e.value.op == "bpf_prog_load" and e.value.row > 300


def test_empty_trace(trace):
    r = replay(trace([]), policies.make("legacy"), M)
    assert r.n_events == 0 and r.counters["emu_shootdowns"] == 0 and len(r.timeline["event_index"]) == 0
