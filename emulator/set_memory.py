"""CPA: ``set_memory_ro/rw/x/nx/rox`` on vmalloc areas (arch/x86/mm/pat/set_memory.c).

``change_page_attr_set_clr`` does, in order:

1. ``vm_unmap_aliases()`` - a lazy purge, 0 or 1 flush, on every call;
2. the primary 4K PTEs (``__change_page_attr``); a PMD leaf of a huge area
   is kept if its protection would not change, updated in place if the
   request covers it, else split (``__should_split_large_page``,
   ``__split_large_page``: own ``flush_tlb_all``; not a direct-map split, so
   no vm event);
3. the direct-map alias (``cpa_process_alias``), with the release rule in
   :class:`emulator.machine.Kernel` (``cpa_alias_nx_kludge``);
4. ``cpa_flush`` only if a PTE changed: ``flush_tlb_all`` when the alias was
   processed (``force_flush_all``) or more than 33 pages, else the per-page
   ``__cpa_flush_tlb`` IPI; 6.15+ through ``flush_tlb_kernel_range``;
5. with ``CPA_COLLAPSE`` (``set_memory_rox``, 6.15+):
   ``cpa_collapse_large_pages`` over the primary range, one more
   ``flush_tlb_all`` if any PMD collapsed.

After an op's first CPA, the events that began while the op was in
progress run (``Kernel.concurrent``): the op's next CPA purges what they
freed, as when a ``do_free_init`` kworker frees between an insmod's calls.
"""

from __future__ import annotations

import numpy as np

from emulator.direct_map import NX, P, PAGE_KERNEL, RW
from emulator.result import WASTE_CAUSES
from emulator.tlb import cpa_flush_tlb, flush_tlb_all, flush_tlb_kernel_range
from emulator.vmalloc import VM_ALLOW_HUGE_VMAP, vm_struct

_PAGE_TABLES = WASTE_CAUSES.index("page_tables")


#: ``bytes.translate`` tables applying ``(prot & keep) | mask_set`` to every page at C speed,
#: indexed ``keep << 3 | mask_set`` (protections are 3 bits: P, RW, NX).
_TABLES: list[bytes] = [bytes((b & keep) | mask_set for b in range(256))
                        for keep in range(8) for mask_set in range(8)]


def _split_vmalloc_pmd(k, area: vm_struct, pmd: int) -> None:
    """``__split_large_page`` of a PMD leaf of a huge vmalloc area: own flush_tlb_all + 1 page-table page."""
    area.pmd_huge.discard(pmd)
    k.vm.pte_tables.add(pmd)
    k.stat["emu_vmalloc_pmd_splits"] += 1
    k.waste(_PAGE_TABLES, 4096)
    flush_tlb_all(k)


def cpa_flush(k, start: int, numpages: int, force_flush_all: bool) -> None:
    """``cpa_flush``: full flush if forced or above the ceiling, else per-page."""
    full = force_flush_all or numpages > k.ceiling or k.cpa_flush_full
    if k.cpa_flush_kernel_range:
        flush_tlb_kernel_range(k, start, None if full else start + numpages)
    elif full:
        flush_tlb_all(k)
    else:
        cpa_flush_tlb(k)


def cpa_collapse_large_pages(k, area: vm_struct, first: int, n: int) -> int:
    """``cpa_collapse_large_pages`` over the primary range; returns PMDs collapsed.

    ``collapse_pmd_page`` succeeds only if all 512 PTEs of the PMD belong to
    this area, are present with identical flags, and map contiguous pfns
    starting 2 MiB-aligned.  Primary addresses are vmalloc addresses, so
    the direct-map collapse counters never move here.
    """
    a0 = area.addr + first
    a1 = a0 + n
    prot = area.prot
    collapsed = 0
    for pmd in range(a0 >> 9, ((a1 - 1) >> 9) + 1):
        if area.pmd_huge is not None and pmd in area.pmd_huge:
            continue
        i0 = (pmd << 9) - area.addr
        if i0 < 0 or i0 + 512 > area.nr_pages:
            continue  # guard page or another area inside this PMD: not all present
        pr = prot[i0:i0 + 512]
        if not (pr[0] & P) or pr.count(pr[0]) != 512:
            continue
        pf = area.pfns[i0:i0 + 512]
        if pf[0] & 511 or pf[511] - pf[0] != 511 or not (np.diff(pf) == 1).all():
            continue
        if area.pmd_huge is None:
            area.pmd_huge = set()
        area.pmd_huge.add(pmd)
        k.vm.pte_tables.discard(pmd)
        k.stat["emu_vmalloc_pmd_collapses"] += 1
        if area.flags & VM_ALLOW_HUGE_VMAP:  # frees the page table its split added
            k.waste(_PAGE_TABLES, -4096)
        collapsed += 1
    if collapsed:
        flush_tlb_all(k)
    return collapsed


def change_page_attr_set_clr(k, area: vm_struct, first: int, n: int, mask_set: int, mask_clr: int,
                             collapse: bool = False) -> bool:
    """Change pages ``[first, first + n)`` of ``area``; returns True if any PTE changed."""
    vm = k.vm                               # vm_unmap_aliases(), inlined: this is the hottest CPA line
    k.stat["emu_vm_unmap_aliases"] += 1
    if vm.lazy_nr or vm.nodes:             # 6.9+: every purge also decays the vmap node pools
        vm._purge()
    if n <= 0 or not (mask_set | mask_clr):
        if k.concurrent is not None:
            k.concurrent()
        return False
    if area.prot is None:
        area.prot = bytearray((PAGE_KERNEL,)) * area.nr_pages
    prot = area.prot
    keep = 7 & ~mask_clr
    old = prot[first:first + n]
    new = old.translate(_TABLES[keep << 3 | mask_set])
    changed = new != old
    whole_large = False
    if area.pmd_huge:
        a0 = area.addr + first
        a1 = a0 + n
        for pmd in sorted(area.pmd_huge):
            p0 = pmd << 9
            if p0 + 512 <= a0 or p0 >= a1:
                continue
            oldp = int(prot[p0 - area.addr])
            if (oldp & keep) | mask_set == oldp:
                continue
            if a0 <= p0 and p0 + 512 <= a1:
                whole_large = True       # preserved: the PMD is updated in place
            else:
                _split_vmalloc_pmd(k, area, pmd)
    if changed:
        prot[first:first + n] = new
        wx = new.count(P | RW)                  # present, writable, not NX
        if wx:
            k.stat["emu_wx_pages"] += wx
    force_flush_all = False
    checkalias = (mask_set | mask_clr) != NX if k.cpa_alias_nx_kludge else True
    if checkalias:
        force_flush_all = True
        aset, aclr = mask_set & ~NX, mask_clr & ~NX   # "Directmap always has NX set, do not modify"
        if aset | aclr:
            if k.dm.change(k, area.pfns[first:first + n], aset, aclr, whole_large):
                changed = True
    if changed:
        cpa_flush(k, area.addr + first, n, force_flush_all)
        if collapse and k.cpa_collapse:
            cpa_collapse_large_pages(k, area, first, n)
    if k.concurrent is not None:
        k.concurrent()
    return changed


def set_memory_ro(k, area, first, n):
    k.stat["emu_set_memory_ro"] += 1
    return change_page_attr_set_clr(k, area, first, n, 0, RW)


def set_memory_rw(k, area, first, n):
    k.stat["emu_set_memory_rw"] += 1
    return change_page_attr_set_clr(k, area, first, n, RW, 0)


def set_memory_x(k, area, first, n):
    k.stat["emu_set_memory_x"] += 1
    return change_page_attr_set_clr(k, area, first, n, 0, NX)


def set_memory_nx(k, area, first, n):
    k.stat["emu_set_memory_nx"] += 1
    return change_page_attr_set_clr(k, area, first, n, NX, 0)


def set_memory_rox(k, area, first, n):
    """Native ``set_memory_rox`` (6.2+): clear RW and NX in one CPA, with ``CPA_COLLAPSE`` (6.15+)."""
    k.stat["emu_set_memory_rox"] += 1
    return change_page_attr_set_clr(k, area, first, n, 0, RW | NX, collapse=True)
