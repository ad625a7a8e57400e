"""vmalloc and the module/execmem range (mm/vmalloc.c), in virtual page numbers.

- ``alloc_vmap_area``: first fit by address over the free blocks of a range,
  one guard page of VA per area (``__get_vm_area_node``), optional alignment.
- ``__vmalloc_node_range``: order-0 pages from the page allocator (or order-9
  blocks for ``VM_ALLOW_HUGE_VMAP``), mapped with **no flush**.
- ``vfree``: PTEs cleared without a flush, the VA queued lazily
  (``free_vmap_area_noflush``); more than ``lazy_max_pages`` queued pages
  trigger a purge (6.x schedules ``drain_vmap_area_work``; here it runs at
  once and is charged to the freeing event).
- ``__purge_vmap_area_lazy``: one ``flush_tlb_kernel_range(lowest, highest)``
  over every queued VA, only if something is queued; then the VAs merge back.
- ``vm_reset_perms`` (``VM_FLUSH_RESET_PERMS``): direct-map alias made not
  present (may split), **one** flush covering direct map and queued VAs,
  then default again; the pages stay 4K.
"""

from __future__ import annotations

from bisect import bisect_right
from operator import sub

import numpy as np

from emulator.direct_map import P, RW, SMALL_CPA
from emulator.errors import KernelFault
from emulator.tlb import flush_tlb_kernel_range
from traces.schema import MAX_VA_SIZE_PAGES, OP_CODE, OPS, THREAD_ALIGN

PAGE_OFFSET = 0xffff888000000000 >> 12          # __PAGE_OFFSET_BASE_L4
VMALLOC_START = 0xffffc90000000000 >> 12
VMALLOC_END = VMALLOC_START + ((32 << 40) >> 12)  # VMALLOC_SIZE_TB_L4 = 32
MODULES_VADDR = 0xffffffffc0000000 >> 12         # __START_KERNEL_map + KERNEL_IMAGE_SIZE (KASLR)
MODULES_END = 0xffffffffff000000 >> 12

VM_FLUSH_RESET_PERMS = 0x100
VM_ALLOW_HUGE_VMAP = 0x400
PMD_PAGES = 512
VMALLOC, VFREE = OP_CODE["vmalloc"], OP_CODE["vfree"]
#: The replay's code for a ``vmalloc`` owned by ``thread_stack`` (not a trace op).
VMALLOC_STACK = len(OPS)
#: ``THREAD_ALIGN`` in pages: the VA alignment ``alloc_thread_stack_node`` asks of ``__vmalloc_node``.
THREAD_ALIGN_PAGES = THREAD_ALIGN >> 12
#: Free VA blocks per chunk of :class:`VmapRange`.
CHUNK = 16
#: ``(lazy_lo, lazy_hi)`` with nothing queued: any queued VA lowers the first and raises the second.
NO_LAZY = (MODULES_END, 0)


def free_blocks(start: int, end: int, busy) -> list[tuple[int, int]]:
    """The ``[s, e)`` stretches of ``[start, end)`` outside the ``(offset, pages)`` ``busy`` blocks
    (offsets from ``start``): a starting state's free space."""
    free, pos = [], start
    for off, n in sorted(busy):
        if start + off > pos:
            free.append((pos, start + off))
        pos = max(pos, start + off + n)
    if end > pos:
        free.append((pos, end))
    return free


class VmFault(KernelFault):
    """An emulated allocation failed (no VA or memory left)."""


class VmapRange:
    """Free VA blocks of one range, ``[start, end)`` page numbers sorted by address.

    The kernel keeps free space in an rb-tree augmented with the largest
    block of each subtree (``find_vmap_lowest_match``); here the sorted
    blocks are cut into chunks of at most :data:`CHUNK` with each chunk's
    largest size (``cmax``, an upper bound), so a first fit skips whole
    chunks that cannot fit, and each chunk's exact first start
    (``cfirst``), so a freed block finds its chunk by bisection.  One-page
    holes can never fit a request (every area has a guard page) and are
    kept aside in ``tiny`` until a free merges them.
    """

    def __init__(self, name: str, start: int, end: int, busy: list[tuple[int, int]] = ()) -> None:
        """``busy``: ``(offset, pages)`` blocks from ``start`` allocated before the replay began."""
        self.name, self.start, self.end = name, start, end
        self.lazy: list[tuple[int, int]] = []      # freed, not yet purged (vmap_purge_list)
        free = free_blocks(start, end, busy)
        self._set([s for s, _ in free], [e for _, e in free])
        self._whole = self.blocks()                # the free space at start: is_whole compares to it

    def _set(self, starts: list[int], ends: list[int]) -> None:
        self.tiny = {x for x, y in zip(starts, ends) if y - x == 1}
        if self.tiny:
            kept = [(x, y) for x, y in zip(starts, ends) if y - x > 1]
            starts, ends = [x for x, _ in kept], [y for _, y in kept]
        self.cs = [starts[i:i + CHUNK] for i in range(0, len(starts), CHUNK)]
        self.ce = [ends[i:i + CHUNK] for i in range(0, len(ends), CHUNK)]
        self.cmax = [max(map(sub, e, s)) for s, e in zip(self.cs, self.ce)]
        self.cfirst = [ch[0] for ch in self.cs]   # each chunk's first start (for bisect)

    def _fix(self, c: int) -> None:
        st, en = self.cs[c], self.ce[c]
        if not st:
            del self.cs[c], self.ce[c], self.cmax[c], self.cfirst[c]
        else:
            self.cfirst[c] = st[0]
            if len(st) > 2 * CHUNK:
                self._split_chunk(c)
            else:
                self.cmax[c] = max(map(sub, en, st))

    def alloc(self, n: int, align: int = 1) -> int | None:
        """``__alloc_vmap_area``: lowest-address free block that fits ``n`` >= 2 pages (area + guard) at ``align``.

        ``cmax`` is an upper bound of each chunk's largest block: carving
        leaves it alone (blocks only shrink) and a chunk whose search finds
        nothing gets its exact value back, so pruning never skips a fit.
        """
        if align != 1:
            return self._alloc_aligned(n, align)
        cmax = self.cmax
        c = -1
        for m in cmax:                 # cmax changes only where the loop continues or returns
            c += 1
            if m < n:
                continue
            st, en = self.cs[c], self.ce[c]
            for i in range(len(st)):
                if en[i] - st[i] >= n:
                    break
            else:
                cmax[c] = max(map(sub, en, st))
                continue
            s = st[i]
            left = en[i] - s - n
            if left <= 1:
                if left:                    # a one-page hole never fits again until a free merges it
                    self.tiny.add(s + n)
                del st[i], en[i]
                if not st:
                    self._fix(c)
                    return s
            else:
                st[i] = s + n
            if i == 0:
                self.cfirst[c] = st[0]
            return s
        return None

    def _alloc_aligned(self, n: int, align: int) -> int | None:
        """:meth:`alloc` with ``align`` > 1: the aligned start may cut the block in two.

        Simplification: the lowest block that fits.  ``find_vmap_lowest_match``
        (``adjust_search_size``) prunes subtrees whose largest block is under
        ``size + align - 1`` bytes, so it may pass a smaller block that fits,
        depending on the rb-tree's shape; modelling that pruning alone, without
        the starting pools' exact content, put 6.12's stacks further from the
        kernel's (check-model, 6.12 modules).
        """
        for c in range(len(self.cmax)):
            if self.cmax[c] < n:
                continue
            st, en = self.cs[c], self.ce[c]
            for i in range(len(st)):
                s0 = st[i]
                e = en[i]
                s = (s0 + align - 1) & -align
                if e - s < n:
                    continue
                if s == s0:
                    if e - s == n:
                        del st[i], en[i]
                    else:
                        st[i] = s + n
                else:
                    en[i] = s
                    if e > s + n:
                        st.insert(i + 1, s + n)
                        en.insert(i + 1, e)
                if i == 0 and st:
                    self.cfirst[c] = st[0]
                if len(st) > 2 * CHUNK or not st:
                    self._fix(c)
                return s
        return None

    def blocks(self) -> tuple[list[int], list[int]]:
        """All free blocks (the one-page holes last)."""
        tiny = sorted(self.tiny)
        return ([x for ch in self.cs for x in ch] + tiny, [x for ch in self.ce for x in ch] + [x + 1 for x in tiny])

    def _sorted_blocks(self, extra: list[tuple[int, int]] = ()) -> tuple[list[int], list[int]]:
        fs, fe = self.blocks()
        s = np.array(fs + [b[0] for b in extra], np.int64)
        e = np.array(fe + [b[1] for b in extra], np.int64)
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
        brk = np.flatnonzero(e[:-1] != s[1:]) + 1      # free blocks never overlap: merge touching ones
        return s[np.r_[0, brk]].tolist(), e[np.r_[brk - 1, len(s) - 1]].tolist()

    def release(self, blocks: list[tuple[int, int]]) -> None:
        """Merge freed ``[start, end)`` blocks back into the free space (``merge_or_add_vmap_area``)."""
        if not self.cs or len(blocks) > 64 + len(self.cs) * CHUNK:   # a rebuild is cheaper
            self._set(*self._sorted_blocks(blocks))
            return
        # one loop for every insert, the lists bound once: purges release blocks ~130k times a
        # 1M-event trace.  _fix and _split_chunk change these lists in place, never rebind them.
        # Any order will do: each block merges with the free neighbours on both sides.
        tiny, cs, ce, cmax, cfirst = self.tiny, self.cs, self.ce, self.cmax, self.cfirst
        for s, e in blocks:
            if s - 1 in tiny:
                tiny.discard(s - 1)
                s -= 1
            if e in tiny:
                tiny.discard(e)
                e += 1
            c = bisect_right(cfirst, s) - 1
            if c < 0:
                c = 0
            st, en = cs[c], ce[c]
            i = bisect_right(st, s)
            if i and en[i - 1] == s:
                i -= 1
                en[i] = e
            else:
                st.insert(i, s)
                en.insert(i, e)
            if i + 1 < len(st):
                if st[i + 1] == en[i]:
                    en[i] = en[i + 1]
                    del st[i + 1], en[i + 1]
            elif c + 1 < len(cs) and cs[c + 1][0] == en[i]:
                en[i] = ce[c + 1][0]
                del cs[c + 1][0], ce[c + 1][0]
                self._fix(c + 1)
            if en[i] - st[i] > cmax[c]:
                cmax[c] = en[i] - st[i]
            cfirst[c] = st[0]
            if len(st) > 2 * CHUNK:
                self._split_chunk(c)

    def _split_chunk(self, c: int) -> None:
        """Cut an overfull chunk in two (the B-tree node split of this two-level list)."""
        st, en = self.cs[c], self.ce[c]
        h = len(st) // 2
        self.cs[c:c + 1] = [st[:h], st[h:]]
        self.ce[c:c + 1] = [en[:h], en[h:]]
        self.cmax[c:c + 1] = [max(map(sub, en[:h], st[:h])), max(map(sub, en[h:], st[h:]))]
        self.cfirst[c:c + 1] = [self.cfirst[c], st[h]]

    def reserve(self, blocks: list[tuple[int, int]]) -> None:
        """Take ``[start, end)`` blocks out of the free space: VA the starting state holds."""
        free = [piece for s, e in zip(*self._sorted_blocks())
                for piece in free_blocks(s, e, [(bs - s, be - bs) for bs, be in blocks if bs < e and s < be])]
        self._set([s for s, _ in free], [e for _, e in free])

    def is_whole(self, extra: list[tuple[int, int]] = ()) -> bool:
        """True when the free space (with ``extra`` blocks) is what it was at start (everything
        since freed and purged)."""
        return self._sorted_blocks(extra) == self._whole


class vm_struct:  # noqa: N801 - the kernel's name
    """One vmalloc area: ``addr`` (first page), ``nr_pages`` mapped, ``pfns`` behind them (a list of
    ints up to ``SMALL_CPA`` pages, an int64 array above: each where it is cheaper to work on).

    ``prot`` is a per-page protection ``bytearray`` once CPA touched the
    area (None = all ``PAGE_KERNEL``); ``pmd_huge`` the PMD indexes
    (``addr >> 9``) currently mapped by a 2M leaf.
    """

    __slots__ = ("addr", "nr_pages", "pfns", "prot", "flags", "vrange", "pmd_huge")

    def __init__(self, addr, nr_pages, pfns, flags, vrange):
        self.addr, self.nr_pages, self.pfns, self.flags, self.vrange = addr, nr_pages, pfns, flags, vrange
        self.prot = None
        self.pmd_huge = None


class Vmalloc:
    """The vmap areas of one kernel: the vmalloc range, the module range and the lazy-free list."""

    def __init__(self, k, lazy_max_pages: int, module_offset: int = 0,
                 busy: list[tuple[int, int, int | None]] = (), module_busy: list[tuple[int, int]] = (),
                 pools: list[tuple[int, int, int]] = ()) -> None:
        """``busy``: ``(offset, pages, id)`` of the vmalloc range in use at start (``Machine.vmalloc_busy``);
        ``module_busy``: ``(offset, pages)`` of the module range (``Machine.module_busy``);
        ``pools``: ``(offset, pages, cpu)`` in vmap node pools at start (``Machine.vmap_pools``).

        Blocks beyond the emulated range (4-level paging's 32 TiB; a 5-level
        host's is larger) are dropped: nothing is ever placed there."""
        busy = [b for b in busy if b[0] + b[1] <= VMALLOC_END - VMALLOC_START]
        self.k = k
        self.pages = k.pages
        self.lazy_max_pages = lazy_max_pages
        self.vmalloc_range = VmapRange("vmalloc", VMALLOC_START, VMALLOC_END, [b[:2] for b in busy])
        self.module_range = VmapRange("modules", MODULES_VADDR + module_offset, MODULES_END,
                                      [b for b in module_busy if b[0] + b[1] <= MODULES_END - MODULES_VADDR])
        self.lazy_nr = 0          # queued pages (vmap_lazy_nr)
        self.lazy_lo, self.lazy_hi = NO_LAZY   # lowest start and highest end queued
        #: PMDs (VA page >> 9) that hold a PTE table: vunmap never frees one, so a 4K mapping leaves
        #: it for the next huge mapping there to free (vmap_try_huge_pmd).  Simplification: only
        #: the replay's own mappings through :meth:`vmalloc` (not plain vmallocs, not the boot's).
        self.pte_tables: set[int] = set()
        self.plain: dict[int, tuple] = {}   # trace id -> plain area (addr, n, pfns[, node]) (see run)
        #: 6.9+ vmap nodes (``nr_vmap_nodes``; 0: none, the global free tree only) and their pools:
        #: (node, pages with guard) -> pooled area starts, the head last (``node_pool_add_va``);
        #: no empty pool is kept, so a decay visits only pools that hold something
        self.nodes = 0
        self.pools: dict[tuple[int, int], list[int]] = {}
        self.big: set[tuple[int, int]] = set()  # the pools of 4 or more: those a decay shrinks
        self.lazy_node: list[int | None] = []   # the node of each vmalloc-range lazy entry (with nodes)
        self.batch_cpu: list[int] = []          # CPU of each event of the replay's batch, from batch_row0
        self.batch_row0 = 0
        self.start_pools = pools
        #: trace id -> (addr, pages with guard) of an area allocated before the replay began: its
        #: vmalloc in the trace takes that VA (busy since boot) instead of a first fit
        self.at_start = {id: (VMALLOC_START + off, n) for off, n, id in busy if id is not None}

    def use_vmap_nodes(self, nr: int, decay_small_pools: bool = False) -> None:
        """6.9+ ``vmap_init_nodes``: ``nr`` nodes (``num_possible_cpus()``, at most 128), each with
        size pools of purged VA that its CPUs' vmallocs take first (``node_alloc``)."""
        self.nodes = min(nr, 128) if nr > 1 else 0
        self.decay_small_pools = decay_small_pools
        self.pools = {}
        if self.nodes and self.start_pools:
            for off, n, cpu in self.start_pools:
                self.pools.setdefault((cpu % self.nodes, n), []).append(VMALLOC_START + off)
            for key, pool in self.pools.items():
                pool.sort()                     # one purge's areas: the highest at the head
                if len(pool) >= 4:
                    self.big.add(key)
            self.vmalloc_range.reserve([(VMALLOC_START + off, VMALLOC_START + off + n)
                                        for off, n, _ in self.start_pools])

    def _node(self, row: int | None) -> int:
        """``raw_smp_processor_id() % nr_vmap_nodes`` of the event at trace ``row``."""
        i = -1 if row is None else row - self.batch_row0
        return self.batch_cpu[i] % self.nodes if 0 <= i < len(self.batch_cpu) else 0

    def _pool_take(self, node: int, n: int, align: int) -> int | None:
        """``node_pool_del_va``: the pool head of ``n`` pages if aligned; a misaligned head goes to
        the tail (no scan of the pool)."""
        pool = self.pools.get((node, n))
        if pool is None:
            return None
        if pool[-1] % align:
            pool.insert(0, pool.pop())
            return None
        if len(pool) <= 4:
            self.big.discard((node, n))
            if len(pool) == 1:
                del self.pools[node, n]
        return pool.pop()

    # -- allocation -------------------------------------------------------------

    def _alloc_va(self, vrange: VmapRange, n: int, align: int) -> int:
        addr = vrange.alloc(n, align)
        if addr is None:  # alloc_vmap_area: reclaim_and_purge_vmap_areas once and retry
            self._purge(full_decay=True)
            addr = vrange.alloc(n, align)
            if addr is None:
                raise VmFault(f"out of {vrange.name} address space ({n} pages requested)")
        return addr

    def vmalloc(self, nr_pages: int, vrange: VmapRange | None = None, flags: int = 0,
                align: int = 1, addr: int | None = None) -> vm_struct:
        """``__vmalloc_node_range``: VA + guard page, pages, 4K PTEs of PAGE_KERNEL, no flush.

        ``VM_ALLOW_HUGE_VMAP`` with a multiple of 512 pages maps order-9
        blocks by PMD at a 2 MiB-aligned address (``vm_area_alloc_pages``).
        ``addr``: an area of the starting state, its VA already busy (``Machine.module_busy``).
        """
        vrange = vrange or self.vmalloc_range
        huge = flags & VM_ALLOW_HUGE_VMAP and nr_pages % PMD_PAGES == 0
        if huge:
            align = PMD_PAGES
        if addr is None:
            addr = self._alloc_va(vrange, nr_pages + 1, align)
        pages = self.k.pages
        if huge:
            pfns = np.concatenate([np.arange(b, b + PMD_PAGES, dtype=np.int64)
                                   for b in (pages.alloc_huge() for _ in range(nr_pages // PMD_PAGES))])
        else:
            pfns = pages.alloc_pages(nr_pages)
            if nr_pages > SMALL_CPA:        # numpy pays off only for large areas (DirectMap.change)
                pfns = np.array(pfns, np.int64)
        area = vm_struct(addr, nr_pages, pfns, flags, vrange)
        pmds = range(addr >> 9, ((addr + nr_pages - 1) >> 9) + 1)
        if huge:
            area.pmd_huge = set(pmds)
            for pmd in sorted(self.pte_tables.intersection(pmds)):
                # vmap_try_huge_pmd -> x86 pmd_free_pte_page: the PTE table goes, after an INVLPG
                # of one page that clears the paging-structure caches (a ranged flush)
                self.pte_tables.discard(pmd)
                flush_tlb_kernel_range(self.k, pmd << 9, (pmd << 9) + 1)
        else:
            self.pte_tables.update(pmds)
        return area

    def run(self, events, dispatch, stat_vmalloc: dict, stat_vfree: dict) -> None:
        """Serve trace events ``(row, op, id, size, ts_ns)``: plain ``vmalloc``/``vfree`` here,
        every other op through ``dispatch(*event)``.

        A plain vmalloc of ``size`` bytes is ``__vmalloc_node_range`` in the
        vmalloc range with order-0 pages and no flags (a :data:`VMALLOC_STACK`
        one at ``THREAD_ALIGN``), kept in :attr:`plain`
        by trace id as ``(addr, n, pfns)``; its vfree queues the VA lazily
        (``free_vmap_area_noflush``, inlined) and frees the pages.  A purge
        either triggers is charged to ``stat_vmalloc``/``stat_vfree``.  A
        :class:`KernelFault` gets the failing event's row as ``row_index``.

        Why the loop lives here: plain ops are ~88% of a busy host's events
        (~880k of a 1M-event ``mixed-fleet`` trace), and serving them in
        this frame, with the kernel state bound once, saves a call level,
        the replay's dispatch and a handful of attribute lookups an event.
        """
        k = self.k
        live = self.plain
        vrange = self.vmalloc_range
        alloc = vrange.alloc
        alloc_pages, free_pages = self.pages.alloc_pages, self.pages.free_pages
        lazy = vrange.lazy
        lazy_max = self.lazy_max_pages
        at_start = self.at_start
        nodes = self.nodes
        i = -1
        try:
            for i, op, id, size, ts in events:
                if op == VMALLOC or op == VMALLOC_STACK:
                    if id in live:
                        raise KernelFault(f"vmalloc id {id} is already live")
                    n = (size + 4095) >> 12 or 1
                    if nodes:
                        node = self._node(i)
                    if at_start and id in at_start:
                        addr = self._take_at_start(id, n + 1)
                    else:
                        addr = None
                        if nodes and n < MAX_VA_SIZE_PAGES:         # node_alloc
                            addr = self._pool_take(node, n + 1, 1 if op == VMALLOC else THREAD_ALIGN_PAGES)
                        if addr is None:
                            addr = alloc(n + 1) if op == VMALLOC else alloc(n + 1, THREAD_ALIGN_PAGES)
                        if addr is None:
                            k.stat = stat_vmalloc
                            addr = self._alloc_va(vrange, n + 1, 1 if op == VMALLOC else THREAD_ALIGN_PAGES)
                    live[id] = (addr, n, alloc_pages(n), node) if nodes else (addr, n, alloc_pages(n))
                elif op == VFREE:
                    area = live.pop(id, None)
                    if area is None:
                        raise KernelFault(f"free of unknown vmalloc id {id} (never allocated or already freed)")
                    start, n, pfns = area[:3]
                    end = start + n + 1
                    if start < self.lazy_lo:
                        self.lazy_lo = start
                    if end > self.lazy_hi:
                        self.lazy_hi = end
                    lazy.append((start, end))
                    if nodes:
                        self.lazy_node.append(area[3])
                    nr = self.lazy_nr = self.lazy_nr + n + 1
                    if nr > lazy_max:
                        k.stat = stat_vfree
                        self._purge()
                    free_pages(pfns)
                else:
                    dispatch(i, op, id, size, ts)
        except KernelFault as e:
            if getattr(e, "row_index", None) is None:     # not already named by a nested run (replay spans)
                e.row_index = i
            raise

    def _take_at_start(self, id: int, n: int) -> int:
        """The VA of trace vmalloc ``id`` allocated before the replay began (``n`` pages with guard)."""
        addr, pages = self.at_start.pop(id)
        if pages != n:
            raise KernelFault(f"vmalloc id {id} of {n - 1} pages does not fit its vmalloc_busy block "
                              f"of {pages - 1} (+ guard) pages")
        return addr

    # -- free -------------------------------------------------------------------

    def vfree(self, area: vm_struct) -> None:
        """``vfree``: lazy VA free (``remove_vm_area``), then ``vm_reset_perms`` if flagged and the
        pages back to the allocator.

        A ``VM_FLUSH_RESET_PERMS`` free that runs concurrently with an op
        finishes after it (``Kernel.defer``): its VA is queued at once, so
        the op's next CPA purges it, and the reset then finds nothing queued
        and flushes only the direct-map range (``_vm_unmap_aliases``).
        """
        self.free_vmap_area_noflush(area.vrange, area.addr, area.addr + area.nr_pages + 1)
        if area.flags & VM_FLUSH_RESET_PERMS:
            if self.k.deferred is not None:
                self.k.defer(lambda: (self.vm_reset_perms(area), self._free_pages(area)))
                return
            self.vm_reset_perms(area)
        self._free_pages(area)

    def _free_pages(self, area: vm_struct) -> None:
        if area.pmd_huge is not None and area.flags & VM_ALLOW_HUGE_VMAP:
            for pfn in area.pfns[::PMD_PAGES].tolist():
                self.k.pages.free_huge(pfn)
        else:
            self.k.pages.free_pages(area.pfns)

    def free_vmap_area_noflush(self, vrange: VmapRange, start: int, end: int) -> None:
        """Queue a VA (with its guard page) for the lazy purge; purge when above ``lazy_max_pages``."""
        if start < self.lazy_lo:       # lazy_lo/hi start empty (see _purge): no branch on lazy_nr
            self.lazy_lo = start
        if end > self.lazy_hi:
            self.lazy_hi = end
        vrange.lazy.append((start, end))
        if self.nodes and vrange is self.vmalloc_range:
            self.lazy_node.append(None)         # not a node_alloc area: back to the free tree
        nr = self.lazy_nr = self.lazy_nr + end - start
        if nr > self.lazy_max_pages:
            self._purge()

    def vm_reset_perms(self, area: vm_struct) -> None:
        """``vm_reset_perms`` / 5.10 ``vm_remove_mappings`` with pages being freed."""
        k = self.k
        dm = k.dm
        k.stat["emu_set_direct_map_invalid"] += 1
        pfns = area.pfns
        if isinstance(pfns, list):                        # a small area (see vmalloc)
            lo, hi = min(pfns), max(pfns) + 1
        else:
            lo, hi = int(pfns.min()), int(pfns.max()) + 1
        dm.change(k, pfns, 0, P | RW)                     # set_direct_map_invalid_noflush
        if k.concurrent is not None:                      # other CPUs' frees until the purge join it
            k.concurrent()
        if not self._purge(PAGE_OFFSET + lo, PAGE_OFFSET + hi):   # _vm_unmap_aliases(start, end, flush_dmap=1)
            # nothing queued (another CPU's purge took this area): the direct-map range alone,
            # full or ranged by how far apart the pages lie - placement, like splits (check_model)
            if hi - lo > k.ceiling:
                k.stat["emu_vm_reset_flush_all"] += 1
            flush_tlb_kernel_range(k, PAGE_OFFSET + lo, PAGE_OFFSET + hi)
        dm.change(k, pfns, P | RW, 0)                     # set_direct_map_default_noflush

    # -- purge ------------------------------------------------------------------

    def _purge(self, start: int | None = None, end: int | None = None, full_decay: bool = False) -> bool:
        """``__purge_vmap_area_lazy(start, end)``: one flush over all queued VAs, if any.

        With vmap nodes (6.9+) every call first gives ~25% of each pool back
        to the free tree, its most recent areas (``decay_va_pool_node``; all
        of them on ``full_decay``), and purged vmalloc-range areas of up to
        ``MAX_VA_SIZE_PAGES`` go to their node's pool (``purge_vmap_node``).
        """
        if self.nodes:
            self._decay_pools(full_decay)
        if not self.lazy_nr:
            return False
        lo, hi = self.lazy_lo, self.lazy_hi
        if start is not None:
            lo, hi = min(lo, start), max(hi, end)
        k = self.k
        k.stat["emu_vmap_purges"] += 1
        flush_tlb_kernel_range(k, lo, hi)
        if self.nodes and not full_decay:
            self._populate_pools()
        for vr in (self.vmalloc_range, self.module_range):
            if vr.lazy:
                vr.release(vr.lazy)
                vr.lazy.clear()             # in place: Vmalloc.run holds the list
        self.lazy_node.clear()
        self.lazy_nr = 0
        self.lazy_lo, self.lazy_hi = NO_LAZY
        return True

    def _decay_pools(self, full: bool) -> None:
        """``decay_va_pool_node`` on every node: each pool gives ``len >> 2`` areas from its head
        back to the free tree (all of them on ``full``).  Before Baoquan He's rework of it (posted
        April 2025, "optimize code in decay_va_pool_node() a little bit"), ``--n_decay`` wrapped
        for a pool of under 4 areas and gave it back whole (:attr:`decay_small_pools`)."""
        released = []
        pools = self.pools
        for key in list(pools if full or self.decay_small_pools else self.big):
            pool = pools[key]
            d = len(pool) if full else len(pool) >> 2 or len(pool)
            released += [(a, a + key[1]) for a in pool[-d:]]
            if d == len(pool):
                del pools[key]
            else:
                del pool[-d:]
            if len(pool) < 4 or key not in pools:
                self.big.discard(key)
        if released:
            self.vmalloc_range.release(released)

    def _populate_pools(self) -> None:
        """The purged vmalloc-range areas a node allocated, up to ``MAX_VA_SIZE_PAGES``, to its pool;
        the others stay on the lazy list, back to the free tree."""
        vr = self.vmalloc_range
        back = []
        for (s, e), node in sorted(zip(vr.lazy, self.lazy_node)):   # the lazy list is by address
            if node is not None and e - s <= MAX_VA_SIZE_PAGES:
                pool = self.pools.setdefault((node, e - s), [])
                pool.append(s)
                if len(pool) == 4:
                    self.big.add((node, e - s))
            else:
                back.append((s, e))
        vr.lazy[:] = back

    def purge_vmap_area_lazy(self) -> bool:
        return self._purge()

    def vm_unmap_aliases(self) -> bool:
        """``vm_unmap_aliases``: a purge, 0 or 1 flush (per-CPU vmap blocks not modelled)."""
        self.k.stat["emu_vm_unmap_aliases"] += 1
        return (self.lazy_nr != 0 or self.nodes != 0) and self._purge()

    def is_whole(self) -> bool:
        """True when no VA is allocated or queued in either range (pooled VA is free)."""
        pooled = [(a, a + n) for (_, n), pool in self.pools.items() for a in pool]
        return not self.lazy_nr and self.vmalloc_range.is_whole(pooled) and self.module_range.is_whole()

