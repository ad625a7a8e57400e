"""The direct map (``PAGE_OFFSET`` + phys): 1G/2M/4K leaves and the CPA work on them.

One ``uint8`` level per 2 MiB region (:data:`emulator.result.LEVEL_4K`,
``LEVEL_2M``, ``LEVEL_1G``); per-page protections exist only for regions
split to 4K (a dict region -> 512 bytes), so memory grows with split
regions, not with RAM.  Counting follows arch/x86/mm/pat/set_memory.c:
``__split_large_page`` (``split_page_count``: DirectMap* and the
``direct_map_level{2,3}_splits`` vm events), one ``flush_tlb_all`` and one
page-table page per split.  The direct map is never collapsed here: only
``set_memory_rox`` on a *primary* address collapses (``cpa_collapse_large_pages``),
and no policy calls CPA on a direct-map primary; the collapse counters stay 0,
as measured on 6.18 and 7.2.
"""

from __future__ import annotations

import numpy as np

from emulator.result import LEVEL_1G, LEVEL_2M, LEVEL_4K, WASTE_CAUSES
from emulator.tlb import flush_tlb_all

#: Protection bits (a model of the x86 PTE bits that matter here).
P, RW, NX = 1, 2, 4
PAGE_KERNEL = P | RW | NX
PAGE_KERNEL_RO = P | NX
PAGE_KERNEL_ROX = P
PAGE_KERNEL_EXEC = P | RW          # W+X: never wanted
PAGE_NONE = NX                     # set_direct_map_invalid_noflush: not present (NX kept)

REGION_PAGES = 512
KB_PER_REGION = 2048
_PAGE_TABLES = WASTE_CAUSES.index("page_tables")
#: Largest CPA (pages) done with Python ints rather than numpy arrays.
SMALL_CPA = 64


class DirectMap:
    """Levels and protections of the direct map of ``nr_regions`` 2 MiB regions."""

    def __init__(self, nr_regions: int, direct_map_kb: tuple[int, int, int] | None) -> None:
        lvl = np.full(nr_regions, LEVEL_2M, np.uint8)
        if direct_map_kb is None:
            n4, n2, ngb = 1, 511, nr_regions
        else:
            k4, m2, g1 = direct_map_kb
            n4, n2, ngb = -(-k4 // KB_PER_REGION), m2 // KB_PER_REGION, g1 >> 20
        n4 = min(n4, nr_regions)
        lvl[:n4] = LEVEL_4K
        pos = min(n4 + n2, nr_regions)
        gb = -(-pos // 512)
        while ngb > 0 and (gb + 1) * 512 <= nr_regions:
            lvl[gb * 512:(gb + 1) * 512] = LEVEL_1G
            gb += 1
            ngb -= 1
        self.level = lvl
        self.nr_regions = nr_regions
        self.count = [int((lvl == v).sum()) for v in (LEVEL_4K, LEVEL_2M, LEVEL_1G)]
        self._level = memoryview(lvl)   # the same bytes, read and written as Python ints
        self.ptes: dict[int, bytearray] = {}   # region -> 512 PTE protections
        self.large_prot: dict[int, int] = {}

    def meminfo_kb(self) -> dict[str, int]:
        """``DirectMap4k/2M/1G`` as ``arch_report_meminfo`` prints them, kB."""
        c = self.count
        return {"DirectMap4k": c[0] * KB_PER_REGION, "DirectMap2M": c[1] * KB_PER_REGION,
                "DirectMap1G": c[2] * KB_PER_REGION}

    # -- splits ---------------------------------------------------------------

    def _split_1g(self, k, region: int) -> None:
        """``__split_large_page`` of a 1G leaf into 512 2M leaves: level-3 split."""
        base = region & ~511
        self.level[base:base + 512] = LEVEL_2M
        self.count[2] -= 512
        self.count[1] += 512
        k.stat["direct_map_level3_splits"] += 1
        k.waste(_PAGE_TABLES, 4096)
        flush_tlb_all(k)

    def _split_2m(self, k, region: int, prot: int) -> None:
        """``__split_large_page`` of a 2M leaf into 512 4K PTEs of the same prot: level-2 split."""
        self._level[region] = LEVEL_4K
        self.count[1] -= 1
        self.count[0] += 1
        self.ptes[region] = bytearray((prot,)) * REGION_PAGES
        self.large_prot.pop(region, None)
        k.stat["direct_map_level2_splits"] += 1
        k.waste(_PAGE_TABLES, 4096)
        flush_tlb_all(k)

    # -- CPA on the direct map ------------------------------------------------

    def change(self, k, pfns, mask_set: int, mask_clr: int, whole_large: bool = False) -> bool:
        """Apply ``(prot & ~mask_clr) | mask_set`` to the direct-map PTEs of ``pfns``; True if any changed.

        ``__change_page_attr`` per page (the alias CPA of a 4K vmalloc primary
        runs one page at a time), regions in address order.  A large leaf
        whose protection would not change is kept; otherwise it is split
        (``__should_split_large_page``) unless ``whole_large`` says the
        request covers a whole 2M leaf (the alias of a PMD-mapped,
        physically contiguous primary), which is then updated in place.  A
        1G leaf is first split to 2M.  ``pfns`` is a list of ints or an
        int64 array; up to :data:`SMALL_CPA` pages go through Python ints
        (numpy's per-call cost dominates there), larger ones through numpy.
        """
        keep = 7 & ~mask_clr
        if len(pfns) > SMALL_CPA:
            return self._change_array(k, np.asarray(pfns, np.int64), keep, mask_set, whole_large)
        pl = pfns.tolist() if isinstance(pfns, np.ndarray) else pfns
        if len(pl) <= 1:
            return bool(pl) and self._change_region(k, pl[0] >> 9, [pl[0] & 511], keep, mask_set, whole_large)
        r = pl[0] >> 9
        if (min(pl) >> 9) == (max(pl) >> 9) == r:         # the common case: one region
            return self._change_region(k, r, [p & 511 for p in pl], keep, mask_set, whole_large)
        groups: dict[int, list[int]] = {}
        for p in pl:
            groups.setdefault(p >> 9, []).append(p & 511)
        changed = False
        for r in sorted(groups):
            if self._change_region(k, r, groups[r], keep, mask_set, whole_large):
                changed = True
        return changed

    def _change_array(self, k, pfns: np.ndarray, keep: int, mask_set: int, whole_large: bool) -> bool:
        """:meth:`change` of many pages: regions grouped by a stable sort."""
        regs = pfns >> 9
        if regs[0] == regs[-1] and (regs == regs[0]).all():
            return self._change_region(k, int(regs[0]), pfns & 511, keep, mask_set, whole_large)
        order = np.argsort(regs, kind="stable")
        sr = regs[order]
        cut = np.flatnonzero(sr[1:] != sr[:-1]) + 1
        changed = False
        for g in np.split(pfns[order], cut):
            if self._change_region(k, int(g[0]) >> 9, g & 511, keep, mask_set, whole_large):
                changed = True
        return changed

    def _change_region(self, k, r: int, offs, keep: int, mask_set: int, whole_large: bool) -> bool:
        """``__change_page_attr`` for the pages at ``offs`` (a list of ints or an array) of 2 MiB region ``r``."""
        level = self._level[r]
        if level != LEVEL_4K:
            old = self.large_prot.get(r, PAGE_KERNEL) if level == LEVEL_2M else PAGE_KERNEL
            req = (old & keep) | mask_set
            if req == old:
                return False                             # no change: the large page is kept
            if level == LEVEL_1G:
                self._split_1g(k, r)
            if whole_large and len(offs) == REGION_PAGES:  # whole 2M leaf: updated in place
                if req == PAGE_KERNEL:
                    self.large_prot.pop(r, None)
                else:
                    self.large_prot[r] = req
                return True
            self._split_2m(k, r, old)
        ptes = self.ptes.get(r)
        if ptes is None:
            ptes = self.ptes[r] = bytearray((PAGE_KERNEL,)) * REGION_PAGES
        if isinstance(offs, list):
            changed = False
            for o in offs:
                old = ptes[o]
                new = (old & keep) | mask_set
                if new != old:
                    ptes[o] = new
                    changed = True
            return changed
        arr = np.frombuffer(ptes, np.uint8)
        sub = arr[offs]
        new = (sub & keep) | mask_set
        if (new != sub).any():
            arr[offs] = new
            return True
        return False
