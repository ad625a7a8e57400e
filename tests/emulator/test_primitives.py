"""kernel-model.md section A, one test per line: exact counts of each primitive on tiny machines.

Placement is controlled by handing areas chosen pfns, so every split is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from emulator.direct_map import NX, P, PAGE_KERNEL, PAGE_KERNEL_ROX, RW
from emulator.machine import Machine
from emulator.result import LEVEL_1G, LEVEL_2M, LEVEL_4K
from emulator.set_memory import set_memory_nx, set_memory_ro, set_memory_rox, set_memory_rw, set_memory_x
from emulator.text_poke import text_poke_bp_batch, text_poke_copy
from emulator.tlb import flush_tlb_all, flush_tlb_kernel_range
from emulator.vmalloc import (MODULES_VADDR, PAGE_OFFSET, VM_ALLOW_HUGE_VMAP, VM_FLUSH_RESET_PERMS, VMALLOC,
                              VMALLOC_STACK, VMALLOC_START)

GIB_KB = 1 << 20


def kernel(nr_cpus=2, gib=2, dm=None, release="5.10"):
    """GIVEN a tiny machine: first GiB 2M-mapped, the rest 1G (or ``dm`` kB), no KASLR."""
    dm = dm or (0, GIB_KB, (gib - 1) * GIB_KB)
    k = Machine(nr_cpus=nr_cpus, mem_bytes=gib << 30, direct_map=dm, kaslr=False).boot(0)
    if release != "5.10":  # 6.2+: aliases always processed; 6.15+: cpa_flush via kernel range, collapse
        k.cpa_alias_nx_kludge = False
        k.cpa_flush_kernel_range = k.cpa_collapse = tuple(map(int, release.split("."))) >= (6, 15)
    return k


def area(k, pfns, flags=VM_FLUSH_RESET_PERMS):
    """A module-range area backed by exactly ``pfns``."""
    a = k.vm.vmalloc(len(pfns), k.vm.module_range, flags)
    k.pages.free_pages(a.pfns)
    a.pfns = np.asarray(pfns, np.int64)
    return a


def c(k, name):
    return sum(d[name] for d in k.per_op.values())


# -- vmalloc area, lazy free, purge ------------------------------------------------------

def test_vmalloc_first_fit_with_guard_page_and_no_flush():
    k = kernel()
    a = k.vm.vmalloc(3, k.vm.module_range)
    b = k.vm.vmalloc(1, k.vm.module_range)
    # THEN areas are placed lowest-first, each followed by one guard page, and mapping sends nothing
    assert (a.addr, b.addr) == (MODULES_VADDR, MODULES_VADDR + 4)
    assert c(k, "emu_shootdowns") == 0
    # WHEN the first is freed and purged THEN its VA (with guard) is reused first
    k.vm.vfree(a)
    k.vm.purge_vmap_area_lazy()
    assert k.vm.vmalloc(2, k.vm.module_range).addr == MODULES_VADDR


def test_thread_stack_vmalloc_is_thread_align_aligned_and_leaves_the_hole_first_fit():
    k = kernel()
    # GIVEN a 1-page plain area (VA: page + guard) WHEN a 16 KiB thread stack follows
    k.vm.run([(0, VMALLOC, 1, 4096, 0), (1, VMALLOC_STACK, 2, 16384, 0), (2, VMALLOC, 3, 4096, 0)],
             None, k.stat, k.stat)
    # THEN the stack starts at the next THREAD_ALIGN (4-page) boundary, as alloc_thread_stack_node
    # asks, and the next 1-page area takes the hole the alignment left
    addr = {id: area[0] - VMALLOC_START for id, area in k.vm.plain.items()}
    assert addr == {1: 0, 2: 4, 3: 2}


@pytest.mark.parametrize("nr_cpus, expect", [(1, 8192), (2, 16384), (8, 32768), (64, 57344)])
def test_lazy_max_pages_is_fls_cpus_times_32mib(nr_cpus, expect):
    assert Machine(nr_cpus=nr_cpus).lazy_max_pages == expect


def test_lazy_free_purges_only_above_lazy_max_pages():
    k = kernel(nr_cpus=2)                      # lazy_max_pages = 16384
    areas = [k.vm.vmalloc(4095) for _ in range(5)]
    for a in areas[:4]:
        k.vm.vfree(a)                          # 4 x 4096 queued = 16384: not above
    assert c(k, "emu_vmap_purges") == 0 and c(k, "emu_shootdowns") == 0
    k.vm.vfree(areas[4])                       # 20480 > 16384: one purge, one full flush
    assert c(k, "emu_vmap_purges") == 1 and c(k, "emu_flush_tlb_all") == 1
    assert k.vm.lazy_nr == 0


def test_purge_is_one_flush_over_all_queued_and_empty_purge_sends_nothing():
    k = kernel()
    assert k.vm.purge_vmap_area_lazy() is False and c(k, "emu_shootdowns") == 0
    a, b = k.vm.vmalloc(4), k.vm.vmalloc(4)
    k.vm.vfree(a)
    k.vm.vfree(b)
    assert k.vm.purge_vmap_area_lazy() is True
    # span 10 pages <= 33: one ranged flush for both
    assert (c(k, "emu_flush_tlb_kernel_range"), c(k, "emu_flush_tlb_all"), c(k, "emu_vmap_purges")) == (1, 0, 1)
    far = [k.vm.vmalloc(40)]
    k.vm.vfree(far[0])
    k.vm.purge_vmap_area_lazy()                # 41 pages > 33: full
    assert c(k, "emu_flush_tlb_all") == 1
    assert k.vm.is_whole()


def test_vm_unmap_aliases_runs_at_the_start_of_every_set_memory_call():
    k = kernel()
    a = area(k, [1000])
    k.vm.vfree(k.vm.vmalloc(1))                # something queued
    set_memory_nx(k, a, 0, 1)                  # no PTE change, but the purge still runs
    assert c(k, "emu_vm_unmap_aliases") == 1 and c(k, "emu_vmap_purges") == 1 and c(k, "emu_shootdowns") == 1
    set_memory_nx(k, a, 0, 1)                  # nothing queued: 0 flushes
    assert c(k, "emu_vm_unmap_aliases") == 2 and c(k, "emu_shootdowns") == 1


def test_flush_reset_perms_free_is_one_flush_and_pages_stay_4k():
    k = kernel()
    a = area(k, [512 * 10 + 3, 512 * 10 + 4])  # both in 2M region 10
    other = k.vm.vmalloc(2)
    k.vm.vfree(other)                          # a lazily freed VA is pending too
    k.vm.vfree(a)
    # THEN: alias made not-present -> region 10 split (own flush), one flush covers dmap + all lazy VAs
    assert c(k, "direct_map_level2_splits") == 1
    assert c(k, "emu_flush_tlb_all") == 2 and c(k, "emu_shootdowns") == 2 and c(k, "emu_vmap_purges") == 1
    assert k.dm.level[10] == LEVEL_4K and k.dm.ptes[10][3] == PAGE_KERNEL
    assert k.vm.lazy_nr == 0


# -- CPA on a vmalloc address -----------------------------------------------------------

def test_set_memory_ro_splits_a_2m_alias_once_with_its_own_flush():
    k = kernel()
    a = area(k, [512 * 7 + 1, 512 * 7 + 2, 512 * 8])   # regions 7 and 8
    set_memory_ro(k, a, 0, 3)
    assert c(k, "direct_map_level2_splits") == 2 and c(k, "direct_map_level3_splits") == 0
    # 2 split flushes + 1 final flush_tlb_all (alias touched -> force_flush_all)
    assert c(k, "emu_flush_tlb_all") == 3 == c(k, "nr_tlb_remote_flush")
    assert c(k, "emu_shootdown_ipis") == 3                # 2 CPUs: 1 IPI a round
    assert k.waste_live[3] == 2 * 4096                    # one page-table page per split
    # WHEN the same region is touched again THEN no new split (already 4K)
    b = area(k, [512 * 7 + 5])
    set_memory_ro(k, b, 0, 1)
    assert c(k, "direct_map_level2_splits") == 2


def test_a_1g_alias_is_a_level3_then_level2_split_each_with_a_flush():
    k = kernel()
    a = area(k, [512 * 600])                   # second GiB: 1G-mapped
    assert k.dm.level[600] == LEVEL_1G
    set_memory_ro(k, a, 0, 1)
    assert (c(k, "direct_map_level3_splits"), c(k, "direct_map_level2_splits")) == (1, 1)
    assert c(k, "emu_flush_tlb_all") == 3
    assert k.dm.level[600] == LEVEL_4K and k.dm.level[601] == LEVEL_2M
    assert k.dm.meminfo_kb() == {"DirectMap4k": 2048, "DirectMap2M": GIB_KB * 2 - 2048, "DirectMap1G": 0}


def test_cpa_final_flush_510_nx_only_is_per_page_up_to_33_pages_else_full():
    k = kernel(release="5.10")
    small = area(k, list(range(1000, 1033)))   # 33 pages
    big = area(k, list(range(2000, 2034)))     # 34 pages
    set_memory_x(k, small, 0, 33)              # NX-only: alias skipped, per-page IPI
    assert (c(k, "emu_cpa_flush"), c(k, "emu_flush_tlb_all")) == (1, 0)
    set_memory_x(k, big, 0, 34)
    assert (c(k, "emu_cpa_flush"), c(k, "emu_flush_tlb_all")) == (1, 1)
    assert c(k, "direct_map_level2_splits") == 0


def test_cpa_62_plus_processes_the_alias_always_so_x_is_a_full_flush():
    k = kernel(release="6.2")
    a = area(k, [1000])
    set_memory_x(k, a, 0, 1)
    assert (c(k, "emu_cpa_flush"), c(k, "emu_flush_tlb_all"), c(k, "direct_map_level2_splits")) == (0, 1, 0)


def test_cpa_that_changes_nothing_sends_nothing():
    k = kernel()
    a = area(k, [1000])
    set_memory_nx(k, a, 0, 1)                  # already NX
    set_memory_rw(k, a, 0, 1)                  # already RW
    assert c(k, "emu_shootdowns") == 0


def test_flush_tlb_kernel_range_ceiling_is_33_pages_and_dmap_to_module_is_full():
    k = kernel()
    flush_tlb_kernel_range(k, 100, 133)
    assert (c(k, "emu_flush_tlb_kernel_range"), c(k, "emu_flush_tlb_all")) == (1, 0)
    flush_tlb_kernel_range(k, 100, 134)
    flush_tlb_kernel_range(k, PAGE_OFFSET, MODULES_VADDR + 1)
    assert (c(k, "emu_flush_tlb_kernel_range"), c(k, "emu_flush_tlb_all")) == (1, 2)
    assert c(k, "nr_tlb_remote_flush") == 0    # only flush_tlb_all() counts there
    flush_tlb_all(k)
    assert c(k, "nr_tlb_remote_flush") == 1 and c(k, "emu_shootdowns") == 4


def test_every_shootdown_sends_nr_cpus_minus_one_ipis():
    k = kernel(nr_cpus=64)
    flush_tlb_all(k)
    flush_tlb_kernel_range(k, 0, 1)
    assert c(k, "emu_shootdown_ipis") == 126


# -- collapse (6.15+) ---------------------------------------------------------------------

def _huge_chunk(k):
    chunk = k.vm.vmalloc(512, k.vm.module_range, VM_ALLOW_HUGE_VMAP)
    assert chunk.pmd_huge == {chunk.addr >> 9} and chunk.pfns[0] % 512 == 0
    return chunk


def test_rox_cache_chunk_is_made_rox_in_place_with_one_flush():
    k = kernel(release="6.15")
    chunk = _huge_chunk(k)
    region = int(chunk.pfns[0]) >> 9
    set_memory_rox(k, chunk, 0, 512)
    # the PMD and a 2M alias are updated in place: no split, 1 flush (plus 1 L3 split if the alias was 1G)
    l3 = c(k, "direct_map_level3_splits")
    assert c(k, "direct_map_level2_splits") == 0 and c(k, "emu_vmalloc_pmd_splits") == 0
    assert c(k, "emu_flush_tlb_all") == 1 + l3
    assert k.dm.level[region] == LEVEL_2M and k.dm.large_prot[region] == P | NX


def test_temporary_rw_splits_the_pmd_and_rox_collapses_it_again():
    k = kernel(release="6.15")
    chunk = _huge_chunk(k)
    set_memory_rox(k, chunk, 0, 512)
    base = c(k, "emu_flush_tlb_all")
    set_memory_nx(k, chunk, 10, 5)             # split the exec PMD: 1 split flush + 1 CPA flush
    assert c(k, "emu_vmalloc_pmd_splits") == 1 and c(k, "emu_flush_tlb_all") == base + 2
    set_memory_rw(k, chunk, 10, 5)             # alias RO -> RW: a direct-map L2 split + CPA flush
    assert c(k, "direct_map_level2_splits") == 1 and c(k, "emu_flush_tlb_all") == base + 4
    set_memory_rox(k, chunk, 10, 5)            # CPA flush + collapse flush
    assert c(k, "emu_vmalloc_pmd_collapses") == 1 and c(k, "emu_flush_tlb_all") == base + 6
    assert chunk.pmd_huge == {chunk.addr >> 9}
    # direct-map collapse counters move only for direct-map addresses
    assert c(k, "direct_map_level2_collapses") == 0 == c(k, "direct_map_level3_collapses")
    # the direct-map split tables stay (L2, and L3 if the alias was 1G); the PMD's table was freed
    assert k.waste_live[3] == 4096 * (1 + c(k, "direct_map_level3_splits"))


def test_a_huge_mapping_over_a_left_pte_table_frees_it_with_a_one_page_flush():
    k = kernel(release="6.15")
    # GIVEN a 4K area at the start of the module range, freed and purged: its PTE table stays
    small = k.vm.vmalloc(4, k.vm.module_range)
    k.vm.vfree(small)
    k.vm.purge_vmap_area_lazy()
    ranged = c(k, "emu_flush_tlb_kernel_range")
    # WHEN a 2 MiB huge area maps that PMD (vmap_try_huge_pmd -> pmd_free_pte_page)
    chunk = _huge_chunk(k)
    assert chunk.addr == small.addr
    # THEN the table goes after an INVLPG of one page: one ranged flush, once
    assert c(k, "emu_flush_tlb_kernel_range") == ranged + 1 and c(k, "emu_flush_tlb_all") == 0
    assert not k.vm.pte_tables
    # AND a huge area on a PMD that never had 4K pages sends nothing
    _huge_chunk(k)
    assert c(k, "emu_flush_tlb_kernel_range") == ranged + 1


def test_a_split_huge_pmd_keeps_its_pte_table_until_a_collapse():
    k = kernel(release="6.15")
    chunk = _huge_chunk(k)
    set_memory_rox(k, chunk, 0, 512)
    set_memory_nx(k, chunk, 10, 5)             # split: the PMD now holds a PTE table
    assert k.vm.pte_tables == {chunk.addr >> 9}
    set_memory_rox(k, chunk, 10, 5)            # collapse frees it
    assert not k.vm.pte_tables


def test_no_collapse_without_contiguous_identical_ptes():
    k = kernel(release="6.15")
    a = area(k, list(range(512 * 20, 512 * 21 - 1)) + [512 * 30])  # 512 pages, last one elsewhere
    set_memory_rox(k, a, 0, 512)
    assert c(k, "emu_vmalloc_pmd_collapses") == 0


def test_no_collapse_before_615():
    k = kernel(release="6.2")
    chunk = _huge_chunk(k)
    set_memory_rox(k, chunk, 0, 512)
    set_memory_rw(k, chunk, 0, 1)
    set_memory_rox(k, chunk, 0, 1)
    assert c(k, "emu_vmalloc_pmd_splits") == 1 and c(k, "emu_vmalloc_pmd_collapses") == 0


# -- text_poke ------------------------------------------------------------------------------

def test_text_poke_is_local_only():
    k = kernel()
    text_poke_copy(k, 4000, 200)               # crosses one page boundary: 2 chunks
    assert c(k, "emu_local_flush") == 2 and c(k, "emu_shootdowns") == 0


@pytest.mark.parametrize("sites, batches", [(1, 1), (256, 1), (257, 2), (1308, 6)])
def test_text_poke_bp_is_3_sync_core_rounds_per_batch_of_256(sites, batches):
    k = kernel(nr_cpus=2)
    text_poke_bp_batch(k, sites)
    assert c(k, "emu_text_poke_bp_batches") == batches
    assert c(k, "emu_sync_core_ipis") == 3 * batches
    assert c(k, "emu_shootdowns") == 0


def test_no_wx_mapping_from_legacy_sequence():
    k = kernel()
    a = area(k, [1000, 1001])
    set_memory_ro(k, a, 0, 2)
    set_memory_x(k, a, 0, 2)
    assert list(a.prot) == [PAGE_KERNEL_ROX] * 2 and c(k, "emu_wx_pages") == 0
    set_memory_rw(k, a, 0, 1)                  # RW + X: counted
    assert c(k, "emu_wx_pages") == 1 and int(a.prot[0]) == P | RW


def test_module_load_patches_each_site_in_its_own_batch_like_xfs_on_61(trace, mod):
    # groundtruth/results/guest: xfs, 1308 text_poke_bp batches, 3924 do_sync_core at 2 CPUs
    from emulator import policies, replay
    r = replay(trace([mod(1, text=1 << 20, data=4096, patch_sites=1308)]), policies.make("linux-6.1"),
               Machine(nr_cpus=2, mem_bytes=2 << 30))
    d = r.per_op["module_load"]
    assert (d["emu_text_poke_bp_batches"], d["emu_sync_core_ipis"]) == (1308, 3924)
