"""6.9+ vmap node pools (mm/vmalloc.c ``node_alloc``, ``purge_vmap_node``, ``decay_va_pool_node``)."""

from __future__ import annotations

import pytest

from emulator import policies
from emulator.machine import Machine
from emulator.vmalloc import VFREE, VMALLOC, VMALLOC_START
from traces.errors import PermtraceError

STACK = 4 * 4096        # a vmalloc of 4 pages: 5 with its guard


def booted(policy: str, vmap_pools: str = ""):
    """GIVEN a 2-CPU kernel (two vmap nodes) under ``policy``."""
    k = Machine(nr_cpus=2, mem_bytes=2 << 30, kaslr=False, vmap_pools=vmap_pools).boot(0)
    policies.make(policy).attach(k)
    return k


def run(k, events: list[tuple[int, int, int, int]]) -> None:
    """Plain vmalloc/vfree events ``(cpu, op, id, size)``, rows from 0."""
    vm = k.vm
    vm.batch_cpu, vm.batch_row0 = [cpu for cpu, *_ in events], 0
    vm.run(((row, op, id, size, row) for row, (_, op, id, size) in enumerate(events)), None, k.stat, k.stat)


def addr(k, id: int) -> int:
    return k.vm.plain[id][0] - VMALLOC_START


def pool(k, node: int, pages: int = 5) -> list[int]:
    return [a - VMALLOC_START for a in k.vm.pools.get((node, pages), [])]


def test_purged_areas_go_to_their_nodes_pool_highest_at_the_head():
    k = booted("linux-7.2")
    # WHEN CPU 0 allocates two areas and frees them, the lower one last, and a purge runs
    run(k, [(0, VMALLOC, 1, STACK), (0, VMALLOC, 2, STACK), (0, VFREE, 2, 0), (0, VFREE, 1, 0)])
    a, b = 0, 5                 # where the first fits put them
    assert k.vm.purge_vmap_area_lazy()
    # THEN both are in node 0's pool in address order (the purge list is sorted), not free
    assert pool(k, 0) == [a, b] and pool(k, 1) == []
    # WHEN CPU 1 allocates the same size THEN its node's pool is empty: fresh VA from the free tree
    run(k, [(1, VMALLOC, 3, STACK)])
    assert addr(k, 3) == 10
    # WHEN CPU 0 allocates twice THEN it takes its pool's head, the highest, then the next
    run(k, [(0, VMALLOC, 4, STACK), (0, VMALLOC, 5, STACK)])
    assert (addr(k, 4), addr(k, 5)) == (b, a) and pool(k, 0) == []


@pytest.mark.parametrize("policy, kept", [("linux-7.2", [0, 5]), ("linux-6.12", [])])
def test_a_pool_under_four_areas_decays_whole_before_6_16_and_stays_after(policy, kept):
    k = booted(policy)
    run(k, [(0, VMALLOC, 1, STACK), (0, VMALLOC, 2, STACK), (0, VFREE, 1, 0), (0, VFREE, 2, 0)])
    k.vm.purge_vmap_area_lazy()
    # WHEN a purge with nothing queued runs (every vm_unmap_aliases does one)
    assert not k.vm.vm_unmap_aliases()
    # THEN 6.12's len >> 2 == 0 wrapped and decayed the pool whole, 7.2 decays nothing
    assert pool(k, 0) == kept
    # and decayed VA is free again: CPU 1 gets the lowest
    run(k, [(1, VMALLOC, 3, STACK)])
    assert addr(k, 3) == (0 if not kept else 10)


def test_a_pool_of_four_or_more_gives_back_a_quarter_from_its_head():
    k = booted("linux-7.2")
    ids = range(1, 9)
    run(k, [(0, VMALLOC, i, STACK) for i in ids] + [(0, VFREE, i, 0) for i in ids])
    k.vm.purge_vmap_area_lazy()
    assert pool(k, 0) == [5 * i for i in range(8)]
    # WHEN two decays run THEN 8 >> 2 = 2, then 6 >> 2 = 1 areas leave, the most recent first
    k.vm.vm_unmap_aliases()
    k.vm.vm_unmap_aliases()
    assert pool(k, 0) == [0, 5, 10, 15, 20]


def test_vmap_pools_of_the_start_are_taken_first_and_not_free():
    # GIVEN node 1's pool holding two 5-page areas at pages 100 and 200 when the replay begins
    k = booted("linux-7.2", "200+5/1,100+5/1")
    # WHEN CPU 0 and then CPU 1 allocate
    run(k, [(0, VMALLOC, 1, STACK), (1, VMALLOC, 2, STACK), (1, VMALLOC, 3, STACK), (1, VMALLOC, 4, STACK)])
    # THEN CPU 0 gets the free tree's lowest; CPU 1 its pool's head (the highest), the next, then free VA
    assert [addr(k, i) for i in (1, 2, 3, 4)] == [0, 200, 100, 5]


def test_before_6_9_there_are_no_pools_and_their_va_is_free():
    # GIVEN a 6.1 kernel and a trace recorded on 6.9+ (start pools at pages 0 and 5)
    k = booted("linux-6.1", "0+5/1,5+5/1")
    # WHEN CPU 1 allocates, frees and a purge runs
    run(k, [(1, VMALLOC, 1, STACK)])
    assert addr(k, 1) == 0
    run(k, [(1, VFREE, 1, 0)])
    k.vm.purge_vmap_area_lazy()
    # THEN the area went back to the free tree: nothing is allocated, queued or pooled
    assert k.vm.nodes == 0 and not k.vm.pools and k.vm.is_whole()


def test_vmap_pools_metadata_is_parsed_and_checked():
    assert Machine.from_metadata({"vmap_pools": "200+5/1,100+12/0"}).vmap_pool_blocks() == [(200, 5, 1), (100, 12, 0)]
    with pytest.raises(PermtraceError, match="vmap_pools"):
        Machine(vmap_pools="200+5")


def test_a_failed_allocation_decays_every_pool_whole_and_fills_none():
    # GIVEN 7.2 pools of 1 and of 4 areas and one area queued lazily
    k = booted("linux-7.2")
    run(k, [(0, VMALLOC, i, STACK) for i in range(1, 7)] + [(0, VFREE, i, 0) for i in range(1, 5)]
        + [(1, VFREE, 5, 0)])
    k.vm.purge_vmap_area_lazy()
    run(k, [(0, VFREE, 6, 0)])
    assert (len(pool(k, 0)), len(pool(k, 1))) == (5, 0)
    # WHEN an allocation finds no VA (reclaim_and_purge_vmap_areas: a full decay, skip_populate)
    k.vm._purge(full_decay=True)
    # THEN no pool is left and everything is free
    assert not k.vm.pools and not k.vm.big and k.vm.is_whole()
