"""Concurrent spans (trace column ``concurrent``): events that began while an op was in progress."""

from __future__ import annotations

import pytest

from emulator import Machine, ReplayError, policies, replay

M = Machine(nr_cpus=2, mem_bytes=4 << 30, kaslr=False)


def race(trace, mod, cpu: int, concurrent: int = 1, batch_size: int = 65536):
    """Module 1 loaded and initialized; then module 2's load (CPU 1), during which module 1's init
    free runs on ``cpu``; returns the per-op counters."""
    events = [mod(1, text=4096, init_text=4096), ("module_init", 1, 0),
              {**mod(2, text=4096, init_text=4096), "cpu": 1, "concurrent": concurrent},
              {"op": "module_init_free", "id": 1, "cpu": cpu}]
    return replay(trace(events), policies.make("linux-6.1"), M, batch_size=batch_size).per_op


def test_an_init_free_on_another_cpu_is_swept_by_the_load_and_resets_after_it(trace, mod):
    # GIVEN the init free on CPU 0 while module 2 loads on CPU 1
    # WHEN replayed
    per_op = race(trace, mod, cpu=0)
    # THEN the load's second CPA purges the init area (one page + guard: a ranged flush), and the
    # init free's vm_reset_perms, after the load, finds nothing queued: no purge of its own, only
    # the direct-map range of its page (one page: ranged)
    load, free = per_op["module_load"], per_op["module_init_free"]
    assert free["emu_vmap_purges"] == 0 and free["emu_flush_tlb_kernel_range"] == 1
    assert free["emu_vm_reset_flush_all"] == 0
    sequential = replay(trace([mod(1, text=4096, init_text=4096), ("module_init", 1, 0),
                               {**mod(2, text=4096, init_text=4096), "cpu": 1},
                               {"op": "module_init_free", "id": 1}]), policies.make("linux-6.1"), M).per_op
    assert load["emu_vmap_purges"] == sequential["module_load"]["emu_vmap_purges"] + 1
    assert sequential["module_init_free"]["emu_vmap_purges"] == 1


def test_an_init_free_on_the_loaders_cpu_runs_whole_inside_the_load(trace, mod):
    # GIVEN the init free on the loading CPU (the load was preempted)
    per_op = race(trace, mod, cpu=1)
    # THEN it purged its own area, as if sequential
    assert per_op["module_init_free"]["emu_vmap_purges"] == 1


def test_a_span_crossing_batches_replays_the_same(trace, mod):
    assert race(trace, mod, cpu=0, batch_size=3) == race(trace, mod, cpu=0)


def test_an_op_without_cpas_gets_its_span_after_it(trace):
    # GIVEN a vmalloc "during which" another area is freed: no permission change to interleave at
    ev = [("vmalloc", 1, 8192), {"op": "vmalloc", "id": 2, "size": 8192, "concurrent": 1}, ("vfree", 1, 0)]
    seq = [("vmalloc", 1, 8192), ("vmalloc", 2, 8192), ("vfree", 1, 0)]
    # THEN it replays as the sequence
    assert replay(trace(ev), policies.make("legacy"), M).counters == \
        replay(trace(seq), policies.make("legacy"), M).counters


def test_a_fault_inside_a_span_names_its_own_row(trace, mod):
    ev = [mod(1, text=4096), {**mod(2, text=4096), "concurrent": 1}, ("vfree", 9, 0)]
    with pytest.raises(ReplayError, match="unknown vmalloc id 9") as e:
        replay(trace(ev), policies.make("linux-6.1"), M)
    assert e.value.row == 2


def test_a_span_past_the_trace_end_replays_what_there_is(trace, mod):
    # GIVEN an invalid span (validate reports it) WHEN replayed THEN the events there are run
    ev = [{**mod(1, text=4096), "concurrent": 5}, ("vmalloc", 1, 4096)]
    r = replay(trace(ev), policies.make("linux-6.1"), M, batch_size=1)
    assert r.n_events == 2 and r.per_op["vmalloc"]["events"] == 1
