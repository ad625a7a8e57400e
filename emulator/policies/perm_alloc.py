"""``perm_alloc``: the 2020 RFC "[PATCH RFC 00/10] New permission vmalloc interface" (Rick Edgecombe).

Read from patch 10/10 (new arch/x86/mm/vmalloc.c) and 01/10; see
kernel-reference.md section 8.  Optimizations 1 (``unmapped_cache``) and 2
(``text_poke_load``) are what the RFC implemented; 3 (``cache_mappings``)
and 4 (``module_2m_mappings``) were only proposed, and are modelled here,
off by default, so their effect can be measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator.direct_map import NX, P, PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL_ROX, RW
from emulator.errors import KernelFault
from emulator.page_alloc import OutOfMemory
from emulator.policies.base import (
    BPF_BINARY_HEADER, CACHE, PAGE_ROUNDING, PAGE_SIZE, Policy, pages, put, take,
)
from emulator.set_memory import set_memory_ro, set_memory_x
from emulator.text_poke import jump_label_add_module, local_flush
from emulator.tlb import flush_tlb_kernel_range
from emulator.vmalloc import PAGE_OFFSET, VM_FLUSH_RESET_PERMS, vm_struct

PMD_PAGES = 512


@dataclass
class PermAlloc(Policy):
    """The 2020 perm_alloc RFC: allocations mapped at their final permission from a cache of unmapped 2 MiB blocks.

    Module load: each permission region is its own allocation (text RX,
    rodata R, ro_after_init RW then R, data RW; init likewise), written by
    ``text_poke`` from a staging vmalloc, so the only shootdown is
    ``perm_change`` of ro_after_init (one ranged flush).  BPF: 0 shootdowns
    with a warm cache; freeing executable memory costs one ranged flush and
    the pages go back to the cache still unmapped.  The shrinker
    (``mem_pressure``) returns cached pages to the direct map.
    """

    #: Optimization 1: pages come from 2 MiB blocks unmapped from the direct map (else legacy CPA on each allocation).
    unmapped_cache: bool = True
    #: Optimization 2: map at the final permission and load with text_poke (else map RW, then set_memory_*).
    text_poke_load: bool = True
    #: Optimization 3 (proposed): freed executable mappings are kept live for reuse; their flush is deferred and batched.
    cache_mappings: bool = False
    #: Optimization 4 (proposed): module regions of one permission share 2 MiB PMD-mapped module-space mappings.
    module_2m_mappings: bool = False

    PRESETS = {}
    SIMPLIFICATIONS = Policy.SIMPLIFICATIONS + (
        "replenish_pages flushes the 2 MiB block's direct-map range as intended (the posted code flushes an empty range)",
        "cache_mappings: cached mappings are reused for the same permission and page count, released in one batch",
    )

    def attach(self, k) -> None:
        super().attach(k)
        self.cache = np.empty(4096, np.int64)     # unmapped (DIRECTMAP_PROTECTED) pfns, LIFO
        self.cache_top = 0
        self.mapping_cache: dict[tuple[int, int], list[vm_struct]] = {}
        self.mapping_cache_pages = 0
        self.groups: dict[int, list] = {}          # prot -> [[area, free_starts, free_ends, used], ...]

    # -- the page cache (arch/x86/mm/vmalloc.c in the RFC) --------------------------

    def _cache_push(self, pfns: np.ndarray) -> None:
        top, n = self.cache_top, len(pfns)
        if top + n > len(self.cache):
            grown = np.empty(max(2 * len(self.cache), top + n), np.int64)
            grown[:top] = self.cache[:top]
            self.cache = grown
        self.cache[top:top + n] = pfns[::-1]
        self.cache_top = top + n
        self.k.waste(CACHE, n * PAGE_SIZE)

    def replenish_pages(self) -> None:
        """An order-9 block, every page ``set_direct_map_invalid_noflush``, one flush, ``vm_unmap_aliases``.

        Without a free 2 MiB block, ``replenish_pages_one``: one mapped page,
        converted (and flushed) by ``perm_alloc`` itself.
        """
        k = self.k
        try:
            base = k.pages.alloc_huge()
        except OutOfMemory:
            pfns = np.array(k.pages.alloc_pages(1), np.int64)
            self._convert(pfns)
            self._cache_push(pfns)
            return
        pfns = np.arange(base, base + PMD_PAGES, dtype=np.int64)
        self._convert(pfns)
        self._cache_push(pfns)

    def _convert(self, pfns: np.ndarray) -> None:
        """Unmap ``pfns`` from the direct map (splits as needed), one ranged flush, then ``vm_unmap_aliases``."""
        k = self.k
        k.stat["emu_set_direct_map_invalid"] += 1
        k.dm.change(k, pfns, 0, P | RW)
        flush_tlb_kernel_range(k, PAGE_OFFSET + int(pfns.min()), PAGE_OFFSET + int(pfns.max()) + 1)
        k.vm.vm_unmap_aliases()

    def get_perm_pages(self, n: int) -> np.ndarray:
        while self.cache_top < n:
            self.replenish_pages()
        top = self.cache_top - n
        self.cache_top = top
        self.k.waste(CACHE, -n * PAGE_SIZE)
        return self.cache[top:top + n][::-1].copy()

    # -- perm_alloc / perm_free / perm_change -------------------------------------

    def perm_alloc(self, n: int, prot: int) -> vm_struct:
        """``perm_alloc`` + ``perm_writable_finish``: VA, cached unmapped pages, map at ``prot``, load."""
        k = self.k
        if not self.unmapped_cache:
            return self._perm_alloc_cpa(n, prot)
        if self.cache_mappings:
            free = self.mapping_cache.get((prot, n))
            if free:
                area = free.pop()
                self.mapping_cache_pages -= n
                k.waste(CACHE, -n * PAGE_SIZE)
                self._load(area, prot)
                return area
        pfns = self.get_perm_pages(n)
        addr = k.vm._alloc_va(k.vm.module_range, n + 1, 1)
        area = vm_struct(addr, n, pfns, 0, k.vm.module_range)
        if self.text_poke_load:
            area.prot = bytearray((prot,)) * n          # map_kernel_range at the final prot: no flush
            self._load(area, prot)
        else:
            area.prot = bytearray((PAGE_KERNEL,)) * n
            self._finish_cpa(area, prot)
        return area

    def _load(self, area: vm_struct, prot: int, n: int | None = None) -> None:
        """``perm_writable_finish``: text_poke each page from a staging vmalloc, then vfree it (lazy)."""
        if prot & RW:
            return                                     # writable: written in place
        k = self.k
        n = area.nr_pages if n is None else n
        staging = k.vm.vmalloc(n)
        local_flush(k, n)
        k.vm.vfree(staging)

    def _finish_cpa(self, area: vm_struct, prot: int) -> None:
        """Without text_poke loading: written RW, then set_memory_* to the final permission."""
        k = self.k
        n = area.nr_pages
        if not prot & RW:
            set_memory_ro(k, area, 0, n)
        if not prot & NX:
            set_memory_x(k, area, 0, n)

    def _perm_alloc_cpa(self, n: int, prot: int) -> vm_struct:
        """The generic (non-x86) implementation: ``module_alloc`` + ``perm_change`` through set_memory_*."""
        area = self.module_alloc(n, VM_FLUSH_RESET_PERMS)
        self._finish_cpa(area, prot)
        return area

    def perm_change(self, area: vm_struct, prot: int) -> None:
        """``set_memory_noalias_noflush`` (no vm_unmap_aliases, no alias) + ``flush_tlb_kernel_range``."""
        k = self.k
        if not self.unmapped_cache:
            if not prot & RW:
                set_memory_ro(k, area, 0, area.nr_pages)
            return
        area.prot[:] = bytes((prot,)) * area.nr_pages
        flush_tlb_kernel_range(k, area.addr, area.addr + area.nr_pages)

    def perm_free(self, area: vm_struct) -> None:
        """``perm_free``: lazy vunmap; executable: one ranged flush; pages back to the cache, still unmapped."""
        k = self.k
        if not self.unmapped_cache:
            k.vm.vfree(area)
            return
        exe = area.prot is not None and not area.prot[0] & NX
        if exe and self.cache_mappings:
            self.mapping_cache.setdefault((int(area.prot[0]), area.nr_pages), []).append(area)
            self.mapping_cache_pages += area.nr_pages
            k.waste(CACHE, area.nr_pages * PAGE_SIZE)
            if self.mapping_cache_pages > k.vm.lazy_max_pages:
                self.release_mappings()
            return
        self._unmap(area)
        if exe:
            flush_tlb_kernel_range(k, area.addr, area.addr + area.nr_pages)
        self._cache_push(area.pfns)

    def _unmap(self, area: vm_struct) -> None:
        self.k.vm.free_vmap_area_noflush(area.vrange, area.addr, area.addr + area.nr_pages + 1)

    def release_mappings(self) -> None:
        """Optimization 3: unmap every cached live mapping with one flush over their span."""
        k = self.k
        areas = [a for lst in self.mapping_cache.values() for a in lst]
        if not areas:
            return
        self.mapping_cache.clear()
        self.mapping_cache_pages = 0
        lo = min(a.addr for a in areas)
        hi = max(a.addr + a.nr_pages for a in areas)
        for a in areas:
            k.waste(CACHE, -a.nr_pages * PAGE_SIZE)
            self._unmap(a)
        flush_tlb_kernel_range(k, lo, hi)
        for a in areas:
            self._cache_push(a.pfns)

    # -- optimization 4: shared 2 MiB module-space mappings ------------------------

    def group_alloc(self, n: int, prot: int):
        """Carve ``n`` pages from a 2 MiB PMD-mapped group of permission ``prot`` (first fit)."""
        if n > PMD_PAGES:
            return self.perm_alloc(n, prot)
        k = self.k
        for g in self.groups.setdefault(prot, []):
            area, starts, ends = g
            for i in range(len(starts)):
                if ends[i] - starts[i] >= n:
                    first = starts[i]
                    if ends[i] - first == n:
                        del starts[i]
                        del ends[i]
                    else:
                        starts[i] = first + n
                    k.waste(CACHE, -n * PAGE_SIZE)
                    self._load(area, prot, n)
                    return ("group", g, first, n)
        # a new group: a whole unmapped 2 MiB block mapped by one PMD at a 2 MiB-aligned address
        base = k.pages.alloc_huge()
        pfns = np.arange(base, base + PMD_PAGES, dtype=np.int64)
        self._convert(pfns)
        addr = k.vm._alloc_va(k.vm.module_range, PMD_PAGES + 1, PMD_PAGES)
        area = vm_struct(addr, PMD_PAGES, pfns, 0, k.vm.module_range)
        area.prot = bytearray((prot,)) * PMD_PAGES
        area.pmd_huge = {addr >> 9}
        g = [area, [n], [PMD_PAGES]]
        self.groups[prot].append(g)
        k.waste(CACHE, (PMD_PAGES - n) * PAGE_SIZE)
        self._load(area, prot, n)
        return ("group", g, 0, n)

    def group_free(self, obj) -> None:
        if not isinstance(obj, tuple):
            return self.perm_free(obj)
        _, g, first, n = obj
        area, starts, ends = g
        starts.append(first)
        ends.append(first + n)
        merged = sorted(zip(starts, ends))
        starts.clear()
        ends.clear()
        for s, e in merged:
            if ends and ends[-1] == s:
                ends[-1] = e
            else:
                starts.append(s)
                ends.append(e)
        self.k.waste(CACHE, n * PAGE_SIZE)
        if not area.prot[0] & NX:
            flush_tlb_kernel_range(self.k, area.addr + first, area.addr + first + n)

    # -- hooks ------------------------------------------------------------------------

    def module_load(self, id: int, sections: tuple[int, ...], patch_sites: int) -> None:
        """One allocation per permission region (x86 RFC loader); ro_after_init R after init (``perm_change``)."""
        k = self.k
        text, data, rodata, ro_ai, itext, idata, irodata = sections
        alloc = self.group_alloc if self.module_2m_mappings else self.perm_alloc
        regions = []
        for size, prot in ((text, PAGE_KERNEL_ROX), (rodata, PAGE_KERNEL_RO), (ro_ai, PAGE_KERNEL),
                           (data, PAGE_KERNEL), (itext, PAGE_KERNEL_ROX), (irodata, PAGE_KERNEL_RO),
                           (idata, PAGE_KERNEL)):
            regions.append(alloc(pages(size), prot) if size else None)
        rounding = sum(pages(s) * PAGE_SIZE - s for s in sections)
        k.waste(PAGE_ROUNDING, rounding)
        put(self.modules, id, [regions, None, rounding], "module")
        jump_label_add_module(k, patch_sites)
        ro = regions[2]
        if ro is not None:                               # do_init_module: ro_after_init -> R
            if isinstance(ro, tuple):                   # a group region cannot change alone: move it
                self.group_free(ro)
                regions[2] = self.group_alloc(pages(ro_ai), PAGE_KERNEL_RO)
            else:
                self.perm_change(ro, PAGE_KERNEL_RO)

    def module_init_free(self, id: int) -> None:
        mod = self.modules.get(id)
        if mod is None:
            raise KernelFault(f"init free of unknown module id {id}")
        for i in (4, 5, 6):
            if mod[0][i] is not None:
                self.group_free(mod[0][i])
                mod[0][i] = None

    def module_unload(self, id: int) -> None:
        regions, _, rounding = take(self.modules, id, "module")
        for r in regions:
            if r is not None:
                self.group_free(r)
        self.k.waste(PAGE_ROUNDING, -rounding)

    def bpf_prog_load(self, id: int, size: int) -> None:
        """``bpf_jit_binary_alloc`` through ``perm_alloc(PERM_RX)``: 0 shootdowns with a warm cache."""
        nbytes = pages(size + BPF_BINARY_HEADER + 128) * PAGE_SIZE
        put(self.progs, id, (self.perm_alloc(nbytes >> 12, PAGE_KERNEL_ROX), nbytes - size), "bpf prog")
        self.k.waste(PAGE_ROUNDING, nbytes - size)

    def bpf_prog_free(self, id: int) -> None:
        area, rounding = take(self.progs, id, "bpf prog")
        self.perm_free(area)
        self.k.waste(PAGE_ROUNDING, -rounding)

    def exec_alloc(self, id: int, size: int, owner: int) -> None:
        nbytes = pages(max(size, 1)) * PAGE_SIZE
        put(self.execs, id, (self.perm_alloc(nbytes >> 12, PAGE_KERNEL_ROX), nbytes - size), "exec")
        self.k.waste(PAGE_ROUNDING, nbytes - size)

    def exec_free(self, id: int) -> None:
        area, rounding = take(self.execs, id, "exec")
        self.perm_free(area)
        self.k.waste(PAGE_ROUNDING, -rounding)

    def mem_pressure(self, size: int) -> None:
        """``perm_shrink_scan``: cached pages back to the direct map (no split: already 4K), one flush, freed."""
        k = self.k
        if self.cache_mappings:
            self.release_mappings()
        for prot, groups in self.groups.items():      # empty 2 MiB groups: unmap, pages back to the cache
            for g in [g for g in groups if g[1] == [0] and g[2] == [PMD_PAGES]]:
                groups.remove(g)
                area = g[0]
                k.waste(CACHE, -PMD_PAGES * PAGE_SIZE)
                self._unmap(area)
                if not prot & NX:
                    flush_tlb_kernel_range(k, area.addr, area.addr + PMD_PAGES)
                self._cache_push(area.pfns)
        n = min(self.cache_top, -(-size // PAGE_SIZE))
        if n <= 0:
            return
        top = self.cache_top - n
        pfns = self.cache[top:self.cache_top].copy()
        self.cache_top = top
        k.waste(CACHE, -n * PAGE_SIZE)
        k.dm.change(k, pfns, P | RW, 0)                 # set_direct_map_default_noflush
        flush_tlb_kernel_range(k, PAGE_OFFSET + int(pfns.min()), PAGE_OFFSET + int(pfns.max()) + 1)
        k.pages.free_pages(pfns)

    # -- final state -------------------------------------------------------------------

    def exec_areas(self):
        for regions, _, _ in self.modules.values():
            for i in (0, 4):
                if regions[i] is not None and not isinstance(regions[i], tuple):
                    yield regions[i]
        for obj in self.progs.values():
            yield obj[0]
        for obj in self.execs.values():
            yield obj[0]

    def text_tlb_entries(self) -> tuple[int, int]:
        n4, n2 = super().text_tlb_entries()
        for g in self.groups.get(PAGE_KERNEL_ROX, []):
            area, starts, ends = g
            if sum(e - s for s, e in zip(starts, ends)) < PMD_PAGES:
                n2 += 1
        return n4, n2

