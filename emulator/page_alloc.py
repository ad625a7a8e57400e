"""The buddy page allocator, reduced to what decides direct-map splits: where pages land.

Physical memory is 2 MiB pageblocks (order 9 = one direct-map PMD region).
Pages are handed out as lists of pfns (ints), never per-page objects, and
no array is sized by total pages (one byte per pageblock only).

What is modelled (mm/page_alloc.c), and how it is simplified:

- Executable and vmalloc pages are *unmovable* ``GFP_KERNEL`` order-0
  allocations.  They are served first from pages freed earlier (the per-CPU
  lists and order-0 free lists are LIFO: ``stack``), then from the
  pageblock the unmovable type currently owns, in address order.
- When that block is used up, ``__rmqueue_fallback`` steals the *largest*
  free block.  While any order >= 9 block is free this yields a fresh
  pageblock; other unmovable kernel allocations (slab, page tables) share
  it, so only part of it is ours: about 210 of 512 pages per 2 MiB region,
  the figure measured on 5.10 (groundtruth/qemu-7.2-aged).  Simplification:
  the interleaved foreign pages are not tracked, our share of the block is
  handed out as consecutive pfns.
- When no large block is left, the fallback claims a partly free *movable*
  pageblock at a random place and gets only its free half or less
  (1..256 pages here): pages scatter over many more regions.
- ``fragmentation``: ``"fresh"`` has large blocks for the whole run;
  ``"aged"`` has none from the start; a ``/proc/buddyinfo`` text gives
  ``sum(count[order] << (order - 9))`` for orders >= 9 large claims before
  behaving as aged.
- Order-9 allocations (huge vmalloc, perm_alloc's cache refill) need a
  whole free pageblock.  Freed order-0 pages stay on the LIFO lists; they
  are not merged back into free pageblocks (simplification: no buddy
  merging or compaction).
"""

from __future__ import annotations

import re

import numpy as np

from emulator.errors import KernelFault

PAGEBLOCK_ORDER = 9
PAGES_PER_BLOCK = 1 << PAGEBLOCK_ORDER
#: Our share of a freshly stolen pageblock (pages), measured mean ~210.
FRESH_SHARE = (150, 271)
#: Our share of a partly free movable pageblock claimed by fallback.
AGED_SHARE = (1, 257)
#: Pageblocks at the bottom of memory taken by firmware, kernel image and boot allocations.
BOOT_RESERVED_BLOCKS = 32

#: Pageblock states: free (in the order >= 9 pool), taken whole, or partly ours via fallback.
FREE, TAKEN, CLAIMED = 0, 1, 2


class OutOfMemory(KernelFault):
    """No pageblock left to serve an allocation."""


def large_blocks_from_buddyinfo(text: str) -> int:
    """Number of free 2 MiB pageblocks in order >= 9 blocks of a ``/proc/buddyinfo`` text."""
    total = 0
    for line in text.splitlines():
        m = re.match(r"\s*Node\s+\d+,\s*zone\s+(\S+)\s+(.*)", line)
        if not m:
            continue
        counts = [int(x) for x in m.group(2).split()]
        total += sum(c << (order - PAGEBLOCK_ORDER) for order, c in enumerate(counts) if order >= PAGEBLOCK_ORDER)
    return total


class PageAllocator:
    """Order-0 runs and order-9 blocks from ``mem_bytes`` of RAM, seeded by ``rng``."""

    def __init__(self, mem_bytes: int, fragmentation: str, rng: np.random.Generator) -> None:
        self.nr_regions = max(mem_bytes >> 21, BOOT_RESERVED_BLOCKS * 2)
        self.rng = rng
        self.state = np.zeros(self.nr_regions, np.uint8)
        self.state[:BOOT_RESERVED_BLOCKS] = TAKEN
        self.nr_free_blocks = self.nr_regions - BOOT_RESERVED_BLOCKS
        self.free_budget = self.nr_free_blocks * PAGES_PER_BLOCK   # pages never handed out yet
        if fragmentation == "fresh":
            self.large_claims_left = self.nr_regions
        elif fragmentation == "aged":
            self.large_claims_left = 0
        else:
            self.large_claims_left = large_blocks_from_buddyinfo(fragmentation)
        # fresh free memory is found in address order from a seeded point
        self.cursor = int(rng.integers(BOOT_RESERVED_BLOCKS, self.nr_regions))
        self.stack: list[int] = []   # LIFO free lists (pcp + order-0), pfns
        self.cur_pfn = self.cur_end = 0
        self.pages_in_use = 0

    def _next_free_block(self) -> int:
        """Lowest free pageblock at or after the cursor (wrapping)."""
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
        st[b] = TAKEN
        self.nr_free_blocks -= 1
        self.cursor = b + 1 if b + 1 < self.nr_regions else BOOT_RESERVED_BLOCKS
        return b

    def _claim(self) -> None:
        """``__rmqueue_fallback``: give the unmovable type a new pageblock to carve from."""
        rng = self.rng
        if self.free_budget <= 0:
            raise OutOfMemory("no free memory left")
        if self.large_claims_left > 0 and self.nr_free_blocks > 0:
            self.large_claims_left -= 1
            b = self._next_free_block()
            self.free_budget -= PAGES_PER_BLOCK
            share = int(rng.integers(*FRESH_SHARE))
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
            share = min(int(rng.integers(*AGED_SHARE)), self.free_budget)
            self.free_budget -= share
        off = int(rng.integers(0, PAGES_PER_BLOCK - share + 1))
        self.cur_pfn = (b << PAGEBLOCK_ORDER) + off
        self.cur_end = self.cur_pfn + share

    def alloc_pages(self, n: int) -> list[int]:
        """``n`` order-0 unmovable pages as a list of pfns (``vm_area_alloc_pages``)."""
        self.pages_in_use += n
        stack = self.stack
        if len(stack) >= n:  # all from the LIFO free lists
            pfns = stack[len(stack) - n:]
            del stack[len(stack) - n:]
            return pfns
        pfns = stack[:]
        stack.clear()
        n -= len(pfns)
        while n:
            if self.cur_pfn == self.cur_end:
                self._claim()
            m = min(n, self.cur_end - self.cur_pfn)
            pfns += range(self.cur_pfn, self.cur_pfn + m)
            self.cur_pfn += m
            n -= m
        return pfns

    def free_pages(self, pfns) -> None:
        """``__free_pages(page, 0)`` for every page (a list or an array): pushed on the LIFO free lists."""
        self.stack += pfns.tolist() if isinstance(pfns, np.ndarray) else pfns
        self.pages_in_use -= len(pfns)

    def alloc_huge(self) -> int:
        """An order-9 block (2 MiB, physically contiguous, aligned); returns its first pfn."""
        b = self._next_free_block()
        self.free_budget -= PAGES_PER_BLOCK
        self.pages_in_use += PAGES_PER_BLOCK
        return b << PAGEBLOCK_ORDER

    def free_huge(self, pfn: int) -> None:
        b = pfn >> PAGEBLOCK_ORDER
        self.state[b] = FREE
        self.nr_free_blocks += 1
        self.free_budget += PAGES_PER_BLOCK
        self.pages_in_use -= PAGES_PER_BLOCK
