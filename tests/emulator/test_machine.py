"""The machine, the page allocator's placement and the VA allocator, as specs."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import Machine, policies, replay
from emulator.page_alloc import (BOOT_HOLE_BLOCKS, BOOT_RESERVED_BLOCKS, PCP_BATCH, PageAllocator,
                                 large_blocks_from_buddyinfo)
from emulator.result import LEVEL_1G, LEVEL_2M, LEVEL_4K
from emulator.vmalloc import MODULES_VADDR, VFREE, VMALLOC, VMALLOC_START, VmapRange
from emulator.errors import ReplayError
from traces.errors import PermtraceError

from .helpers import NaiveRange

BUDDYINFO = """Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      2
Node 0, zone    DMA32    450    300    120     40     10      4      2      1      3      2      1
Node 0, zone   Normal  962000   1200    300     20      4      0      0      0      1      0      3
"""


def test_defaults_are_64_cpus_64_gib_fresh_with_1g_pages_where_possible():
    m = Machine()
    assert (m.nr_cpus, m.mem_bytes, m.fragmentation) == (64, 64 << 30, "fresh")
    k = m.boot(0)
    kb = k.dm.meminfo_kb()
    assert kb == {"DirectMap4k": 2048, "DirectMap2M": 511 * 2048, "DirectMap1G": 63 << 20}
    assert k.dm.level[0] == LEVEL_4K and k.dm.level[1] == LEVEL_2M and k.dm.level[512] == LEVEL_1G


def test_from_metadata_reads_the_trace_and_overrides_win():
    meta = {"nr_cpus": "2", "mem_total_bytes": str(8 << 30), "DirectMap4k": "24448 kB",
            "DirectMap2M": "4169728 kB", "DirectMap1G": "4194304 kB", "buddyinfo": BUDDYINFO, "source": "x"}
    m = Machine.from_metadata(meta, nr_cpus=8)
    assert (m.nr_cpus, m.mem_bytes, m.direct_map) == (8, 8 << 30, (24448, 4169728, 4194304))
    assert m.fragmentation == BUDDYINFO
    kb = m.boot(0).dm.meminfo_kb()
    assert kb["DirectMap1G"] == 4194304 and kb["DirectMap4k"] == 24576   # rounded up to whole 2 MiB regions
    with pytest.raises(PermtraceError, match="unknown machine field"):
        Machine.from_metadata({}, cpus=3)
    with pytest.raises(PermtraceError, match="DirectMap"):
        Machine.from_metadata({"DirectMap4k": "lots"})


def test_vmalloc_busy_at_start_is_skipped_by_first_fit_and_whole_again_after_frees(trace):
    # GIVEN a recorded layout: pages [0, 16) and [21, 32) of the vmalloc range already in use
    m = Machine.from_metadata({"nr_cpus": "2", "vmalloc_busy": "0+16,21+11"}, kaslr=False)
    k = m.boot(0)
    # WHEN a 1-page, a 4-page and a 1-page area are allocated (each with its guard page)
    k.vm.run([(0, VMALLOC, 1, 4096, 0), (1, VMALLOC, 2, 16384, 0), (2, VMALLOC, 3, 4096, 0)],
             None, k.stat, k.stat)
    # THEN first fit goes around the busy blocks: the 4-page area does not fit the 3-page hole
    assert {id: a[0] - VMALLOC_START for id, a in k.vm.plain.items()} == {1: 16, 2: 32, 3: 18}
    # and freeing and purging everything gives back the start's free space, not an empty range
    k.vm.run([(3, VFREE, i, 0, 0) for i in (1, 2, 3)], None, k.stat, k.stat)
    k.vm.purge_vmap_area_lazy()
    assert k.vm.is_whole()
    with pytest.raises(PermtraceError, match="vmalloc_busy"):
        Machine(vmalloc_busy="0+16,x")
    # a block beyond the emulated 32 TiB (a 5-level host's vmalloc space is larger) is never reached
    assert Machine(vmalloc_busy=f"0+16,{9 << 30}+5@4").boot(0).vm.vmalloc_range.blocks()[0][0] == VMALLOC_START + 16
    with pytest.raises(PermtraceError, match=r"file t\.parquet: bad machine metadata: vmalloc_busy"):
        Machine.from_metadata({"vmalloc_busy": "12+x"}, "t.parquet")


def test_an_area_of_the_start_is_freed_where_it_lies(trace):
    # GIVEN pages [4, 8) busy at start as the trace's vmalloc 7 (3 pages + guard), [0, 4) free
    k = Machine(nr_cpus=2, vmalloc_busy="4+4@7", kaslr=False).boot(0)
    # WHEN its stand-in vmalloc and a 1-page area come THEN the stand-in takes its block, the other
    # area the free space below it
    k.vm.run([(0, VMALLOC, 7, 12288, 0), (1, VMALLOC, 8, 4096, 0)], None, k.stat, k.stat)
    assert {id: a[0] - VMALLOC_START for id, a in k.vm.plain.items()} == {7: 4, 8: 0}
    # WHEN a stand-in's size does not match its block THEN the replay names the event
    bad = trace([("vmalloc", 7, 4096)], {"nr_cpus": "2", "vmalloc_busy": "4+4@7"})
    with pytest.raises(ReplayError, match="does not fit its vmalloc_busy block") as e:
        replay(bad, policies.make("legacy"), Machine.from_metadata({"nr_cpus": "2", "vmalloc_busy": "4+4@7"}))
    assert e.value.row == 0


def test_module_busy_lays_out_the_module_range_in_place_of_the_load_offset():
    # GIVEN 514 pages of the module range in use at start (a KASLR machine: its offset is ignored)
    k = Machine(nr_cpus=2, module_busy="0+514", kaslr=True).boot(0)
    # WHEN an executable area is allocated THEN it lands right above them
    assert k.vm.vmalloc(1, k.vm.module_range).addr == MODULES_VADDR + 514
    with pytest.raises(PermtraceError, match="module_busy"):
        Machine(module_busy="0+5@3")
    assert Machine.from_metadata({"module_busy": "0+2"}).module_blocks() == [(0, 2)]


def test_boot_holes_come_after_the_starting_state():
    # GIVEN a page allocator booted for a trace whose first events rebuild the boot's own state
    pa = PageAllocator(4 << 30, "fresh", np.random.default_rng(0), boot_holes=False)
    reserved = BOOT_RESERVED_BLOCKS << 9
    # WHEN the boot's allocations are served (8 pcp batches) THEN they come from a fresh pageblock
    assert min(pa.alloc_pages(8 * PCP_BATCH)) >= reserved
    # WHEN the boot then leaves its holes THEN the next pages come from them
    pa.boot_holes()
    assert max(pa.alloc_pages(8)) < reserved


def test_replay_leaves_the_boot_holes_to_after_the_warmup_events(trace, monkeypatch):
    # GIVEN a trace with one warmup event; WHEN replayed THEN boot_holes runs once, after it
    calls = []
    orig = PageAllocator.boot_holes
    monkeypatch.setattr(PageAllocator, "boot_holes", lambda self: (calls.append(self.pages_in_use), orig(self)))
    meta = {"nr_cpus": "2", "warmup_events": "1"}
    replay(trace([("vmalloc", 1, 4096), ("vmalloc", 2, 4096)], meta), policies.make("legacy"),
           Machine.from_metadata(meta, kaslr=False))
    assert calls == [1]


def test_machine_is_hashable_for_run_ids():
    assert hash(Machine(direct_map=[1, 2, 3])) == hash(Machine(direct_map=(1, 2, 3)))


def test_buddyinfo_counts_free_pageblocks_in_order_9_and_up():
    # order 9 counts once, order 10 twice: DMA32 2 + 1*2, Normal 0 + 3*2; ZONE_DMA is kept from
    # GFP_KERNEL by lowmem_reserve (the aged 5.10 guest's JIT pages never landed below 16 MiB)
    assert large_blocks_from_buddyinfo(BUDDYINFO) == 4 + 6


def test_fresh_unmovable_pages_fill_consecutive_regions_about_430_a_region():
    # measured on 5.10 (groundtruth/qemu-7.2-aged/results/aged_jit_placement.md): ~213 JIT pages per
    # 2 MiB region, each with its live program page, so ~426 of ours and ~86 foreign per region
    pa = PageAllocator(16 << 30, "fresh", np.random.default_rng(0))
    pfns = np.array(pa.alloc_pages(4096))
    fresh = pfns[pfns >= BOOT_RESERVED_BLOCKS * 512]          # past the boot's partly free blocks
    regions, counts = np.unique(fresh >> 9, return_counts=True)
    assert np.all(np.diff(fresh) >= 1)                       # in address order
    assert 380 <= counts[1:-1].mean() <= 470 and np.all(np.diff(regions) == 1)
    # a freed page is the next one handed out (LIFO free lists)
    pa.free_pages(pfns[100:101])
    assert pa.alloc_pages(1)[0] == pfns[100]


def test_aged_memory_scatters_pages_over_more_regions():
    # measured on 5.10 with no free block >= order 9 left: 13 -> 17-20 splits, 1-215 pages a region
    fresh = np.array(PageAllocator(16 << 30, "fresh", np.random.default_rng(0)).alloc_pages(4096))
    aged = np.array(PageAllocator(16 << 30, "aged", np.random.default_rng(0)).alloc_pages(4096))
    rf = np.unique(fresh >> 9)
    ra = np.unique(aged >> 9)
    rf, ra = rf[rf >= BOOT_RESERVED_BLOCKS], ra[ra >= BOOT_RESERVED_BLOCKS]   # past the boot's holes
    assert 1.3 * len(rf) < len(ra) < 3 * len(rf)
    assert np.all(np.diff(rf) == 1) and not np.all(np.diff(ra) == 1)  # consecutive vs scattered


def test_out_of_memory_is_a_replay_error(trace):
    t = trace([("vmalloc", i, 64 << 20) for i in range(40)])
    with pytest.raises(PermtraceError, match="row .*vmalloc"):
        replay(t, policies.make("legacy"), Machine(nr_cpus=2, mem_bytes=1 << 30))


def test_a_4tib_machine_costs_no_more_than_a_64gib_one(trace):
    t = trace([("bpf_prog_load", i, 300) for i in range(200)])

    def peak(mem):
        tracemalloc.start()
        replay(t, policies.make("legacy"), Machine(mem_bytes=mem), seed=0)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top
    small, big = peak(64 << 30), peak(4 << 40)
    assert big < small + (8 << 20)             # two bytes per 2 MiB region, nothing per page


# -- first fit over free VA blocks, against a naive reference ------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 40), st.sampled_from([1, 1, 1, 8]), st.booleans(),
                          st.integers(0, 30)), min_size=1, max_size=300))
def test_vmap_first_fit_matches_a_naive_lowest_address_first_fit(script):
    fast, slow = VmapRange("t", 1000, 1000 + 4000), NaiveRange(1000, 5000)
    live, pending = [], []
    for n, align, free, batch in script:
        a, b = fast.alloc(n, align), slow.alloc(n, align)
        assert a == b
        if a is not None:
            live.append((a, a + n))
        if free and live:
            pending.append(live.pop(len(live) // 2))
        if len(pending) > batch:
            fast.release(list(pending))
            slow.release(list(pending))
            pending = []
    fast.release(live + pending)
    assert fast.is_whole()


@pytest.mark.parametrize("fragmentation", ["fresh", "aged", BUDDYINFO])
def test_no_page_is_handed_out_twice(fragmentation):
    pa = PageAllocator(1 << 30, fragmentation, np.random.default_rng(1))
    pages = pa.alloc_pages(20_000)
    huge = [pa.alloc_huge() for _ in range(20)]
    pages += pa.alloc_pages(20_000)
    everything = np.concatenate([np.array(pages)] + [np.arange(b, b + 512) for b in huge])
    assert len(np.unique(everything)) == len(everything) == 40_000 + 20 * 512
    lowest = BOOT_RESERVED_BLOCKS - BOOT_HOLE_BLOCKS[1]      # the boot's partly free blocks are below
    assert np.all(everything >= lowest * 512) and np.all(everything < (1 << 30) >> 12)
