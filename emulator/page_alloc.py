"""The buddy page allocator, reduced to what decides direct-map splits: where pages land.

Physical memory is 2 MiB pageblocks (order 9 = one direct-map PMD region).
Pages are handed out as lists of pfns (ints) built from ranges, never
per-page objects, and no array is sized by total pages (one byte per pageblock).

Executable and vmalloc pages are *unmovable* ``GFP_KERNEL`` pages
(``vm_area_alloc_pages``: order 0, through ``alloc_pages_bulk`` since 5.13).
They come, in this order (mm/page_alloc.c):

1. the per-CPU list (``__rmqueue_pcplist``), LIFO: pages freed last come
   back first.  When it is empty, ``rmqueue_bulk`` refills it
   ``PCP_BATCH`` pages at a time; above ``pcp->high`` pages its oldest go
   back to the buddy (``free_pcppages_bulk``), where they merge with free
   buddies (``__free_one_page``).  Simplification: one list for all CPUs
   (the traces switch CPU rarely: 29 times in 19874 vmalloc/vfree events of
   the 6.1 BPF guest).
2. the unmovable buddy lists (``__rmqueue_smallest``): the smallest free
   block first (``free_area[order]``, LIFO), split by ``expand``.  A boot
   leaves a few such blocks in partly free pageblocks (``BOOT_HOLES``).
3. the pageblock the unmovable type is carving, lowest page first.  Other
   unmovable kernel allocations (slab, page tables, per-cpu chunks)
   interleave with ours there: ``FOREIGN_PER_PAGE`` pages per page of ours,
   after order-0 pieces and aligned large-order blocks alike
   (the rate varies per pageblock).  Calibrated on 5.10, 8 GiB, 2048 tiny
   programs: ~213 JIT pages per 2 MiB region, each with its one live
   program page, so ~86 foreign pages per 426 of ours
   (groundtruth/qemu-7.2-aged/results/aged_jit_placement.md).  The
   workload's own companion allocations are in the trace, not in this rate.
4. ``__rmqueue_fallback``: while a free block of order >= 9 exists it steals
   the *largest* one and claims the whole pageblock
   (``find_suitable_fallback``, ``steal_suitable_fallback``), in address
   order from a seeded start; pageblocks that merged back whole are taken
   first, most recent first.  With none left (``"aged"``) it takes a movable
   pageblock at a random place, claimed only when at least half of it is
   free: our share of it is 1..512 pages, uniform (the aged 5.10 guest:
   1-215 JIT pages a region, 21-23 regions instead of 14).

``fragmentation``: ``"fresh"`` has large blocks for the whole run; ``"aged"``
none from the start; a ``/proc/buddyinfo`` text gives ``sum(count[order] <<
(order - 9))`` over orders >= 9 of every zone but DMA large claims first.

Order-9 requests (huge vmalloc, perm_alloc's cache) take a whole free
pageblock.  ``vmalloc_large_order`` (6.19+, "mm/vmalloc: request large order
pages from buddy allocator", ``vm_area_alloc_pages``) first asks for blocks
of order ``ilog2(remaining)``, naturally aligned, lowering the order on
failure, and bulk order-0 pages only for the rest: a 2 MiB ``bpf_prog_pack``
is then one pageblock (measured on 7.2: every pack one aligned 2 MiB region,
module data areas aligned 16 + 4 pages).  7.2's ``vfree`` gives such blocks
back whole (``free_pages_bulk``), so the next large request finds them again
instead of carving a new pageblock (measured: 5 of 7.2's 20 new packs took a
freed pack's 2 MiB block).

Not modelled: where an earlier history split the direct map (a starting
``DirectMap4k`` says how much, not where our next pages land), per-CPU lists
of more CPUs, compaction, movable allocations (they never share our pageblocks
while large free blocks exist).
"""

from __future__ import annotations

import re

import numpy as np

from emulator.errors import KernelFault

PAGEBLOCK_ORDER = 9
PAGES_PER_BLOCK = 1 << PAGEBLOCK_ORDER
#: ``pcp->batch`` (``zone_batchsize``: 63 for any zone of 1 GiB or more).
PCP_BATCH = 63
#: CPUs sharing the low watermark in ``zone_highsize`` (the ground-truth machines had 2).
PCP_CPUS = 2
#: Foreign unmovable pages per page of ours carved from a pageblock (mean; see module doc).
FOREIGN_PER_PAGE = 0.2
#: Our pages carved between two foreign allocations at most (interleaving granularity).
PIECE = 16
#: Our share of a partly free movable pageblock claimed by an aged fallback, pages.
AGED_SHARE = (1, PAGES_PER_BLOCK + 1)
#: Pageblocks at the bottom of memory taken by firmware, kernel image and boot allocations.
BOOT_RESERVED_BLOCKS = 32
#: Partly free unmovable pageblocks a boot leaves (count, a range; at the top of the reserved
#: ones) and the free blocks in them per order 0..8 (count, a range).  The 5.10 guests'
#: first JIT pages landed in 3-5 such regions, 6.1's BPF packs in 4, 6.12's in 5 (the cpa
#: kprobe's direct-map addresses in qemu-5.10-6.12/results); /proc/pagetypeinfo, Unmovable,
#: DMA32 + Normal, orders 0-9: 3 4 3 4 2 1 1 1 1 1 (qemu-7.2-aged/REPORT.md).
BOOT_HOLE_BLOCKS = (3, 7)
BOOT_HOLES = ((1, 6), (1, 6), (1, 5), (1, 6), (1, 4), (0, 3), (0, 2), (0, 2), (0, 2))

#: Pageblock states: free (in the order >= 9 pool), taken whole, or partly ours via fallback.
FREE, TAKEN, CLAIMED = 0, 1, 2


class OutOfMemory(KernelFault):
    """No pageblock left to serve an allocation."""


def large_blocks_from_buddyinfo(text: str) -> int:
    """Free 2 MiB pageblocks in order >= 9 blocks of a ``/proc/buddyinfo`` text, DMA zone excluded.

    ``GFP_KERNEL`` allocations do not fall back to ZONE_DMA (``lowmem_reserve``).
    """
    total = 0
    for line in text.splitlines():
        m = re.match(r"\s*Node\s+\d+,\s*zone\s+(\S+)\s+(.*)", line)
        if not m or m.group(1) == "DMA":
            continue
        counts = [int(x) for x in m.group(2).split()]
        total += sum(c << (order - PAGEBLOCK_ORDER) for order, c in enumerate(counts) if order >= PAGEBLOCK_ORDER)
    return total


def _aligned_blocks(s: int, e: int):
    """``[s, e)`` as naturally aligned blocks, lowest first: ``(first pfn, order)``, orders up to 9."""
    while s < e:
        k = min((s & -s).bit_length() - 1, (e - s).bit_length() - 1, PAGEBLOCK_ORDER)
        yield s, k
        s += 1 << k


def pcp_high(mem_bytes: int, nr_cpus: int) -> int:
    """``pcp->high`` (``zone_highsize``): the low watermark split over the CPUs, at least 4 batches.

    ``calculate_min_free_kbytes``: ``sqrt(16 * lowmem kB)``; ``__setup_per_zone_wmarks``: low =
    min + max(min / 4, managed pages * watermark_scale_factor (10) / 10000).  Simplification: all
    memory is one zone.  4 GiB, 2 CPUs: 1548 pages.
    """
    kb = mem_bytes >> 10
    min_pages = min(max(int((kb * 16) ** 0.5), 128), 262144) >> 2
    low = min_pages + max(min_pages >> 2, (mem_bytes >> 12) * 10 // 10000)
    return max(low // max(nr_cpus, 1), 4 * PCP_BATCH)


class PageAllocator:
    """Unmovable pages from ``mem_bytes`` of RAM, seeded by ``rng``.

    ``vmalloc_large_order``: serve multi-page requests with naturally
    aligned high-order blocks first (6.19+); ``free_pages_bulk``: free them
    as such blocks again (7.2).  The release's policy sets both.
    """

    vmalloc_large_order = False
    free_pages_bulk = False

    def __init__(self, mem_bytes: int, fragmentation: str, rng: np.random.Generator,
                 boot_holes: bool = True) -> None:
        self.nr_regions = max(mem_bytes >> 21, BOOT_RESERVED_BLOCKS * 2)
        self.rng = rng
        self.state = np.zeros(self.nr_regions, np.uint8)
        self.state[:BOOT_RESERVED_BLOCKS] = TAKEN
        self.nr_free_blocks = self.nr_regions - BOOT_RESERVED_BLOCKS
        if fragmentation == "fresh":
            self.large_claims_left = self.nr_regions
        elif fragmentation == "aged":
            self.large_claims_left = 0
        else:
            self.large_claims_left = large_blocks_from_buddyinfo(fragmentation)
        # fresh free memory is found in address order from a seeded point
        self.cursor = int(rng.integers(BOOT_RESERVED_BLOCKS, self.nr_regions))
        self.freed_blocks: list[int] = []    # pageblocks merged back by frees, LIFO
        self.pcp: list[int] = []             # the per-CPU list, pfns, LIFO (popped from the end)
        self.pcp_high = pcp_high(mem_bytes, PCP_CPUS)
        # free buddy blocks per order 0..8: first pfn -> None, popped LIFO (dicts keep insertion order)
        self.free_area: list[dict[int, None]] = [{} for _ in range(PAGEBLOCK_ORDER)]
        self.cur_pfn = self.cur_end = 0      # the pageblock being carved: [cur_pfn, cur_end)
        self.rate = FOREIGN_PER_PAGE
        self.foreign = 0.0
        self.pages_in_use = 0
        if boot_holes:
            self.boot_holes()

    def boot_holes(self) -> None:
        """Free blocks of ``BOOT_HOLES`` orders at aligned random places of the boot's partly free pageblocks.

        What the boot leaves behind: made at construction, or, for a trace
        whose first events stand for allocations made during boot (its
        starting state, e.g. the boot's ``bpf_prog_pack``), after those
        (:func:`emulator.replay`); else the boot's own pack would eat them.
        """
        rng = self.rng
        nr = int(rng.integers(*BOOT_HOLE_BLOCKS))
        used: dict[int, list[tuple[int, int]]] = {}
        holes: list[tuple[int, int]] = []
        for order, (lo, hi) in enumerate(BOOT_HOLES):
            size = 1 << order
            for _ in range(int(rng.integers(lo, hi))):
                b = BOOT_RESERVED_BLOCKS - 1 - int(rng.integers(nr))
                off = int(rng.integers(PAGES_PER_BLOCK >> order)) << order
                spans = used.setdefault(b, [])
                if any(s < off + size and off < e for s, e in spans):
                    continue                        # overlaps a hole already there
                spans.append((off, off + size))
                holes.append(((b << PAGEBLOCK_ORDER) + off, order))
        for first, order in sorted(holes, reverse=True):   # simplification: handed out in address order
            self._free_block(first, order)

    # -- pageblocks -------------------------------------------------------------

    def _next_free_block(self) -> int:
        """A free pageblock: the last one merged back, else the lowest at or after the cursor (wrapping)."""
        if self.freed_blocks:
            b = self.freed_blocks.pop()
        else:
            if self.nr_free_blocks <= 0:
                raise OutOfMemory("no free 2 MiB pageblock left")
            st, n = self.state, self.nr_regions
            i = self.cursor
            while True:  # scan in chunks: cost does not grow with memory size
                hit = np.flatnonzero(st[i:i + 4096] == FREE)
                if len(hit):
                    b = i + int(hit[0])
                    break
                i = i + 4096 if i + 4096 < n else BOOT_RESERVED_BLOCKS
            self.cursor = b + 1 if b + 1 < self.nr_regions else BOOT_RESERVED_BLOCKS
        self.state[b] = TAKEN
        self.nr_free_blocks -= 1
        return b

    def _has_large_block(self) -> bool:
        return bool(self.freed_blocks) or (self.large_claims_left > 0 and self.nr_free_blocks > 0)

    def _take_large_block(self) -> int:
        if not self.freed_blocks:
            self.large_claims_left -= 1
        return self._next_free_block()

    def _release_block(self, b: int) -> None:
        self.state[b] = FREE
        self.nr_free_blocks += 1
        self.freed_blocks.append(b)

    def _claim(self) -> None:
        """``__rmqueue_fallback``: give the unmovable type a new pageblock to carve from."""
        rng = self.rng
        if self._has_large_block():
            b = self._take_large_block()
            share, off = PAGES_PER_BLOCK, 0
        else:
            # a partly free movable pageblock at a random place (any block we do not hold)
            st = self.state
            for _ in range(8):
                b = int(rng.integers(BOOT_RESERVED_BLOCKS, self.nr_regions))
                if st[b] == FREE:
                    break
            else:
                free = np.flatnonzero(st == FREE)
                if not len(free):
                    raise OutOfMemory("every pageblock is in use")
                b = int(free[rng.integers(len(free))])
            st[b] = CLAIMED
            self.nr_free_blocks -= 1
            share = int(rng.integers(*AGED_SHARE))
            off = int(rng.integers(0, PAGES_PER_BLOCK - share + 1))
        self.cur_pfn = (b << PAGEBLOCK_ORDER) + off
        self.cur_end = self.cur_pfn + share
        self.rate = FOREIGN_PER_PAGE * float(rng.uniform(0.5, 1.5))

    # -- the buddy lists ----------------------------------------------------------

    def _rmqueue(self, n: int, pfns: list[int]) -> None:
        """Append ``n`` order-0 pages from the buddy: the smallest free blocks first, then the carved
        pageblock in pieces of ``PIECE`` pages, each followed by the foreign pages of its ``rate``."""
        area = self.free_area
        while n:
            a0 = area[0]
            if a0:
                pop = a0.popitem
                for _ in range(min(n, len(a0))):
                    pfns.append(pop()[0])
                    n -= 1
                continue
            for k in range(1, PAGEBLOCK_ORDER):
                if area[k]:
                    first = area[k].popitem()[0]
                    m = min(n, 1 << k)
                    pfns += range(first, first + m)
                    self._free_run(first + m, first + (1 << k))   # expand: the rest stays free
                    n -= m
                    break
            else:
                if self.cur_pfn >= self.cur_end:
                    self._claim()
                m = min(n, PIECE, self.cur_end - self.cur_pfn)
                pfns += range(self.cur_pfn, self.cur_pfn + m)
                n -= m
                self.foreign += m * self.rate
                skip = int(self.foreign)
                self.foreign -= skip
                self.cur_pfn = min(self.cur_pfn + m + skip, self.cur_end)

    def _free_run(self, s: int, e: int) -> None:
        """Free pfns ``[s, e)`` to the buddy as naturally aligned blocks."""
        for first, k in _aligned_blocks(s, e):
            self._free_block(first, k)

    def _free_block(self, pfn: int, order: int) -> None:
        """``__free_one_page``: merge with the free buddy while there is one; a whole pageblock is free again.
        Simplification: the pageblock being carved and the per-CPU list are not buddies to merge with."""
        area = self.free_area
        while order < PAGEBLOCK_ORDER:
            buddy = pfn ^ (1 << order)
            free = area[order]
            if buddy not in free:
                free[pfn] = None
                return
            del free[buddy]
            pfn &= ~(1 << order)
            order += 1
        self._release_block(pfn >> PAGEBLOCK_ORDER)

    def _free_runs(self, pfns: list[int]) -> None:
        """:meth:`_free_run` over every run of consecutive pfns in ``pfns`` (any order, no repeats).

        Drains are a few pcp batches long: a plain sort beats numpy's setup at that size."""
        pfns = sorted(pfns)
        start = prev = pfns[0]
        for pfn in pfns[1:]:
            if pfn != prev + 1:
                self._free_run(start, prev + 1)
                start = pfn
            prev = pfn
        self._free_run(start, prev + 1)

    # -- order 0 ------------------------------------------------------------------

    def alloc_pages(self, n: int) -> list[int]:
        """``n`` unmovable pages as a list of pfns (``vm_area_alloc_pages``)."""
        self.pages_in_use += n
        pcp = self.pcp
        left = len(pcp) - n
        if left >= 0 and (n == 1 or not self.vmalloc_large_order):   # the common case, all from the pcp
            tail = pcp[left:]                  # LIFO: the last freed first
            del pcp[left:]
            tail.reverse()
            return tail
        pfns: list[int] = []
        if self.vmalloc_large_order and n > 1:
            pfns = self._alloc_large_orders(n)
            n -= len(pfns)
        if len(pcp) >= n:
            tail = pcp[len(pcp) - n:]
            del pcp[len(pcp) - n:]
            tail.reverse()
            pfns += tail
            return pfns
        pfns += pcp[::-1]
        n -= len(pcp)
        pcp.clear()
        # rmqueue_bulk refills the per-CPU list a batch at a time: the rest of the last batch stays on it
        extra = -n % PCP_BATCH
        self._rmqueue(n + extra, pfns)
        if extra:
            pcp += pfns[:len(pfns) - extra - 1:-1]
            del pfns[len(pfns) - extra:]
        return pfns

    def _alloc_large_orders(self, n: int) -> list[int]:
        """The large-order pass of ``vm_area_alloc_pages`` (6.19+): blocks of order ``ilog2(remaining)``
        down to 1, lowering the order on failure; ``split_page`` keeps each contiguous.
        Simplification: at most order 9 (an order-10 block is two order-9 ones)."""
        pfns: list[int] = []
        max_order = PAGEBLOCK_ORDER
        order = min(max_order, n.bit_length() - 1)
        while order > 0:
            first = self._alloc_order(order)
            if first is None:
                max_order = order - 1
            else:
                pfns += range(first, first + (1 << order))
            left = n - len(pfns)
            order = min(max_order, left.bit_length() - 1) if left else 0
        return pfns

    def _alloc_order(self, order: int) -> int | None:
        """First pfn of a free, naturally aligned ``1 << order`` block, or None (``__rmqueue_smallest``:
        the smallest free block that fits, the rest of it back on the lower-order lists by ``expand``)."""
        if order == PAGEBLOCK_ORDER:
            return self._take_large_block() << PAGEBLOCK_ORDER if self._has_large_block() else None
        area = self.free_area
        for k in range(order, PAGEBLOCK_ORDER):
            if area[k]:
                first = area[k].popitem()[0]
                while k > order:                       # expand: the upper halves stay free
                    k -= 1
                    area[k][first + (1 << k)] = None
                return first
        size = 1 << order
        for attempt in (0, 1):
            start = -(-self.cur_pfn // size) * size
            if start + size <= self.cur_end:
                self._free_run(self.cur_pfn, start)     # the alignment gap stays free
                self.foreign += size * self.rate        # foreign pages follow, as in _rmqueue
                skip = int(self.foreign)
                self.foreign -= skip
                self.cur_pfn = min(start + size + skip, self.cur_end)
                return start
            if attempt == 0:
                self._free_run(self.cur_pfn, self.cur_end)
                self.cur_pfn = self.cur_end
                self._claim()
        return None

    def free_pages(self, pfns) -> None:
        """``__free_pages(page, 0)`` for every page (a list or an array): onto the per-CPU list; above
        ``pcp_high`` its oldest pages go back to the buddy and merge (``free_pcppages_bulk``).
        With :attr:`free_pages_bulk`, runs of contiguous pages go as blocks first."""
        self.pages_in_use -= len(pfns)
        if type(pfns) is not list:
            pfns = pfns.tolist()
        if self.free_pages_bulk and len(pfns) > 1:
            pfns = self._free_contig_range(pfns)
            if not pfns:
                return
        pcp = self.pcp
        pcp += pfns
        over = len(pcp) - self.pcp_high
        if over > 0:
            drain = over + PCP_BATCH
            self._free_runs(pcp[:drain])
            del pcp[:drain]

    def _free_contig_range(self, pfns: list[int]) -> list[int]:
        """7.2 ``vfree`` -> ``vm_area_free_pages`` -> ``free_pages_bulk``: each run of physically
        contiguous pages is freed by ``__free_contig_range`` as its naturally aligned chunks, each
        one ``__free_frozen_pages(page, order)``; so a large-order block a vmalloc took (or pages
        carved in a row) is a free block again at once, not order-0 pages for the per-CPU list to
        hand out one by one.  Returns the single pages, which still go to the per-CPU list.
        Simplification: chunks of order 1-3 and 9 go to the buddy too (the kernel passes them
        through per-CPU lists of their order, ``pcp_allowed_order``); order 10 is two order-9."""
        single: list[int] = []
        j, n = 0, len(pfns)
        while j < n:
            s = pfns[j]
            e = j + 1
            while e < n and pfns[e] == pfns[e - 1] + 1:
                e += 1
            for first, k in _aligned_blocks(s, s + e - j):
                if k:
                    self._free_block(first, k)
                else:
                    single.append(first)
            j = e
        return single

    # -- order 9 ------------------------------------------------------------------

    def alloc_huge(self) -> int:
        """An order-9 block (2 MiB, physically contiguous, aligned); returns its first pfn."""
        b = self._next_free_block()
        self.pages_in_use += PAGES_PER_BLOCK
        return b << PAGEBLOCK_ORDER

    def free_huge(self, pfn: int) -> None:
        self._release_block(pfn >> PAGEBLOCK_ORDER)
        self.pages_in_use -= PAGES_PER_BLOCK
