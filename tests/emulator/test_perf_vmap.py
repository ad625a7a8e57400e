"""The chunked free-VA list of :class:`emulator.vmalloc.VmapRange` against a naive first fit.

The chunked list prunes by each chunk's largest block and finds the chunk
of a freed block by bisecting each chunk's first start; both must stay
exact however blocks move between chunks (carving a chunk's first block,
merging across a chunk boundary, lazy purges of many blocks).
"""

from __future__ import annotations

import random

import pytest

from emulator.vmalloc import VmapRange

from .helpers import NaiveRange


def test_freed_neighbours_are_one_block_for_the_next_first_fit():
    # GIVEN three adjacent areas of 3 pages and a 7-page hole nowhere below them
    r = VmapRange("t", 100, 10_000)
    a, b, c = r.alloc(3), r.alloc(3), r.alloc(3)
    assert (a, b, c) == (100, 103, 106)
    # WHEN the first two are freed in separate purges
    r.release([(b, b + 3)])
    r.release([(a, a + 3)])
    # THEN a 6-page request reuses both, a 7-page one goes above the third
    assert r.alloc(6) == 100
    assert r.alloc(7) == 109


def test_aligned_requests_skip_blocks_whose_aligned_part_is_too_small():
    # GIVEN a hole of 600 pages at 100 whose 512-aligned part is only 188 pages, then busy pages
    r = VmapRange("t", 0, 1 << 20)
    assert (r.alloc(100), r.alloc(900), r.alloc(2000)) == (0, 100, 1000)
    r.release([(100, 700)])
    # WHEN 512 pages are asked for at 512-page alignment
    # THEN the hole is skipped for the first aligned start above the busy pages; 100 pages fit it
    assert r.alloc(512, 512) == 3072
    assert r.alloc(100, 512) == 512


def test_the_range_end_is_a_hard_limit():
    # GIVEN a 10-page range with 8 pages busy
    r = VmapRange("t", 50, 60)
    assert r.alloc(8) == 50
    # WHEN more than what is left is asked for THEN there is no fit; what is left still fits
    assert r.alloc(3) is None
    assert r.alloc(2) == 58
    r.release([(50, 58), (58, 60)])
    assert r.is_whole()


def test_first_fit_stays_exact_when_a_block_grows_across_a_chunk_boundary():
    # GIVEN 64 areas of 3 pages with every other one freed: holes of 3 in at least two chunks
    fast, slow = VmapRange("t", 0, 100_000), NaiveRange(0, 100_000)
    for _ in range(64):
        assert fast.alloc(3) == slow.alloc(3)
    holes = [(a, a + 3) for a in range(0, 192, 6)]
    fast.release(list(holes))
    slow.release(list(holes))
    x = fast.cs[1][0]                                   # first hole of the second chunk
    assert fast.ce[0][-1] == x - 3                      # the first chunk's last hole ends 3 pages before it
    # WHEN the areas either side of x are freed, so the first chunk's last block swallows the
    # second chunk's first two holes, and that block is then carved past x and partly freed
    for area in ((x - 3, x), (x + 3, x + 6)):
        fast.release([area])
        slow.release([area])
    assert fast.alloc(6) == slow.alloc(6) == x - 6
    assert fast.alloc(4) == slow.alloc(4) == x
    fast.release([(x, x + 4)])
    slow.release([(x, x + 4)])
    # THEN the freed pages merge with their neighbour and a 7-page request lands at x
    assert fast.alloc(7) == slow.alloc(7) == x


@pytest.mark.parametrize("seed", range(4))
def test_long_lazy_purge_scripts_match_a_naive_first_fit(seed):
    # GIVEN a range with many live areas of mixed sizes and alignments
    rng = random.Random(seed)
    fast, slow = VmapRange("t", 1000, 1000 + 200_000), NaiveRange(1000, 1000 + 200_000)
    live: list[tuple[int, int]] = []
    lazy: list[tuple[int, int]] = []
    for step in range(6000):
        n = rng.choice((2, 2, 3, 5, 9, 17, 40, rng.randint(2, 300)))
        align = 512 if rng.random() < 0.02 else 1
        # WHEN areas are allocated, freed lazily and purged in batches of 1..200 blocks
        a, b = fast.alloc(n, align), slow.alloc(n, align)
        # THEN both pick the same lowest-address block
        assert a == b, f"step {step}: fast {a} naive {b} for {n} pages at align {align}"
        if a is not None:
            live.append((a, a + n))
        while live and rng.random() < 0.5:
            lazy.append(live.pop(rng.randrange(len(live))))
        if len(lazy) > rng.choice((0, 1, 5, 40, 200)):
            fast.release(list(lazy))
            slow.release(list(lazy))
            lazy = []
    fast.release(live + lazy)
    assert fast.is_whole()
