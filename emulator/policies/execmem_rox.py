"""``execmem_rox``: module text from the execmem ROX cache of 2 MiB huge-mapped chunks (Linux 6.15+)."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from emulator.direct_map import P, RW
from emulator.errors import KernelFault
from emulator.policies.base import CACHE
from emulator.policies.bpf_prog_pack import BpfProgPack
from emulator.set_memory import set_memory_nx, set_memory_rox, set_memory_rw
from emulator.vmalloc import MODULES_VADDR, VM_ALLOW_HUGE_VMAP, free_blocks, vm_struct

PMD_PAGES = 512


class execmem_text:  # noqa: N801 - a busy range of the cache (mm/execmem.c busy_areas entry)
    __slots__ = ("chunk", "first", "nr_pages")

    def __init__(self, chunk: vm_struct, first: int, nr_pages: int) -> None:
        self.chunk, self.first, self.nr_pages = chunk, first, nr_pages


@dataclass
class ExecmemRox(BpfProgPack):
    """Linux 6.15+: module text carved from 2 MiB ROX chunks, made RW to load and ROX again with collapse.

    ``execmem_alloc(EXECMEM_MODULE_TEXT)`` first-fits the cache's free
    ranges; ``execmem_cache_populate`` adds a 2 MiB ``VM_ALLOW_HUGE_VMAP``
    chunk made ROX in one ``set_memory_rox``.  The loader's
    ``execmem_alloc_rw`` (``set_memory_nx`` + ``set_memory_rw``) splits the
    chunk's PMD and the direct-map alias; ``execmem_restore_rox``
    (``set_memory_rox`` with ``CPA_COLLAPSE``) re-forms the PMD.  Freed text
    goes back RW -> INT3 -> ROX; whole free chunks are released by the
    ``execmem_cache_clean`` work that ``execmem_cache_free`` schedules.
    Simplification: the work runs at once.  The kernel's kworker runs when the
    freeing task yields: in the 7.2 recordings here mostly within the same
    rmmod, between its purges, sometimes just after it (a flush or a purge
    lands in the neighbouring op then).  Data and BPF are as ``bpf_prog_pack``
    with 7 areas and native ``set_memory_rox``.
    """

    mod_mem_areas: bool = True
    native_rox: bool = True
    after_init_rodata: bool = False
    #: 6.15+ ``cpa_collapse_large_pages`` after ``set_memory_rox`` (off = 6.13's cache without collapse).
    collapse: bool = True
    #: 6.19+ ``vm_area_alloc_pages`` asks the buddy allocator for naturally aligned
    #: high-order blocks first ("mm/vmalloc: request large order pages from buddy
    #: allocator"); measured on 7.2: every 2 MiB pack is one aligned pageblock.
    vmalloc_large_order: bool = False
    #: 7.2 ``vfree`` frees each physically contiguous run of its pages as aligned blocks
    #: ("vmalloc: optimize vfree with free_pages_bulk()"; ``free_pages_bulk`` in the 7.2.12 guest's kallsyms).
    free_pages_bulk: bool = False
    vmap_nodes: bool = True
    decay_small_pools: bool = False

    PRESETS = {"linux-6.18": {}, "linux-7.2": {"vmalloc_large_order": True, "free_pages_bulk": True}}

    def attach(self, k) -> None:
        super().attach(k)
        k.cpa_flush_kernel_range = True
        k.cpa_collapse = self.collapse
        k.pages.vmalloc_large_order = self.vmalloc_large_order
        k.pages.free_pages_bulk = self.free_pages_bulk
        self.cache_starts: list[int] = []   # free_areas: sorted [start, end) VA pages
        self.cache_ends: list[int] = []
        self.chunks: dict[int, vm_struct] = {}  # chunk addr -> area
        self.busy: dict[int, execmem_text] = {}
        for offset, nr_pages, busy in k.machine.execmem_chunks():
            self._start_chunk(MODULES_VADDR + offset, nr_pages, busy)

    # -- mm/execmem.c -------------------------------------------------------------

    def _cache_add(self, start: int, end: int) -> None:
        """``execmem_cache_add``: merge a free range into ``free_areas``."""
        st, en = self.cache_starts, self.cache_ends
        i = bisect_right(st, start)
        if i and en[i - 1] == start:
            i -= 1
            en[i] = end
        else:
            st.insert(i, start)
            en.insert(i, end)
        if i + 1 < len(st) and st[i + 1] == en[i]:
            en[i] = en[i + 1]
            del st[i + 1]
            del en[i + 1]
        self.k.waste(CACHE, (end - start) << 12)

    def _cache_take(self, n: int) -> int | None:
        """``__execmem_cache_alloc``: first fit by address; returns the start page or None."""
        st, en = self.cache_starts, self.cache_ends
        for i in range(len(st)):
            s = st[i]
            if en[i] - s >= n:
                if en[i] - s == n:
                    del st[i]
                    del en[i]
                else:
                    st[i] = s + n
                self.k.waste(CACHE, -(n << 12))
                return s
        return None

    def execmem_cache_populate(self, n: int) -> None:
        """A new chunk: ``execmem_vmalloc(round_up(size, 2M), VM_ALLOW_HUGE_VMAP)``, INT3, ``set_memory_rox``."""
        k = self.k
        size = -(-n // PMD_PAGES) * PMD_PAGES
        chunk = k.vm.vmalloc(size, k.vm.module_range, VM_ALLOW_HUGE_VMAP)
        set_memory_rox(k, chunk, 0, size)
        self.chunks[chunk.addr] = chunk
        self._cache_add(chunk.addr, chunk.addr + size)

    def _start_chunk(self, addr: int, nr_pages: int, busy: list[tuple[int, int]]) -> None:
        """A chunk the kernel populated before the replay began (``Machine.execmem_cache``), as
        :meth:`execmem_cache_populate` leaves it, its ``busy`` ``(offset, pages)`` holding text.
        Not counted: the boot did that work."""
        k = self.k
        chunk = k.vm.vmalloc(nr_pages, k.vm.module_range, VM_ALLOW_HUGE_VMAP, addr=addr)
        stat, k.stat = k.stat, dict.fromkeys(k.stat, 0)
        nodes, k.vm.nodes = k.vm.nodes, 0       # at boot the vmap node pools were empty: no decay
        set_memory_rox(k, chunk, 0, nr_pages)
        k.stat, k.vm.nodes = stat, nodes
        self.chunks[addr] = chunk
        for start, end in free_blocks(addr, addr + nr_pages, busy):
            self._cache_add(start, end)

    def _chunk_of(self, addr: int) -> vm_struct:
        for base, chunk in self.chunks.items():
            if base <= addr < base + chunk.nr_pages:
                return chunk
        raise KernelFault(f"execmem cache address {addr:#x} is in no chunk")

    def module_text_alloc(self, nr_pages: int) -> execmem_text:
        """``execmem_alloc_rw(EXECMEM_MODULE_TEXT)``: carve from the cache, then ``execmem_force_rw``."""
        addr = self._cache_take(nr_pages)
        if addr is None:
            self.execmem_cache_populate(nr_pages)
            addr = self._cache_take(nr_pages)
        chunk = self._chunk_of(addr)
        text = execmem_text(chunk, addr - chunk.addr, nr_pages)
        self.busy[addr] = text
        set_memory_nx(self.k, chunk, text.first, nr_pages)   # execmem_force_rw
        set_memory_rw(self.k, chunk, text.first, nr_pages)
        return text

    def module_text_rox(self, text: execmem_text, n: int) -> None:
        """``execmem_restore_rox``: ``set_memory_rox`` with ``CPA_COLLAPSE``."""
        set_memory_rox(self.k, text.chunk, text.first, text.nr_pages)

    def module_text_free(self, text: execmem_text) -> None:
        """``execmem_cache_free``: force RW, INT3 fill, restore ROX, back to ``free_areas``; then clean."""
        k = self.k
        chunk = text.chunk
        set_memory_nx(k, chunk, text.first, text.nr_pages)
        set_memory_rw(k, chunk, text.first, text.nr_pages)
        set_memory_rox(k, chunk, text.first, text.nr_pages)
        addr = chunk.addr + text.first
        del self.busy[addr]
        self._cache_add(addr, addr + text.nr_pages)
        self.execmem_cache_clean()          # schedule_work(&execmem_cache_clean_work), run at once

    def execmem_cache_clean(self) -> None:
        """Release every free range that is a whole PMD-aligned chunk: direct map valid again, lazy vfree."""
        k = self.k
        st, en = self.cache_starts, self.cache_ends
        for i in reversed(range(len(st))):
            chunk = self.chunks.get(st[i])
            if chunk is not None and en[i] - st[i] >= chunk.nr_pages:
                s = st[i]
                if en[i] - s == chunk.nr_pages:
                    del st[i]
                    del en[i]
                else:
                    st[i] = s + chunk.nr_pages
                k.waste(CACHE, -(chunk.nr_pages << 12))
                del self.chunks[s]
                k.dm.change(k, chunk.pfns, P | RW, 0, whole_large=True)  # execmem_set_direct_map_valid
                k.vm.vfree(chunk)

    def module_data_alloc(self, nr_pages: int) -> vm_struct:
        """``execmem_alloc_rw(EXECMEM_MODULE_DATA)``: ``execmem_vmalloc`` then nx + rw (no PTE change, no flush)."""
        area = self.module_alloc(nr_pages)
        set_memory_nx(self.k, area, 0, nr_pages)
        set_memory_rw(self.k, area, 0, nr_pages)
        return area

    def mem_pressure(self, size: int) -> None:
        """The ROX cache has no shrinker: only ``execmem_cache_clean`` releases chunks."""

    # -- final state ---------------------------------------------------------------

    def module_text_areas(self):
        """None: module text lives in the ROX cache's chunks, counted by :meth:`text_tlb_entries`."""
        return ()

    def text_tlb_entries(self) -> tuple[int, int]:
        """Cache chunks: one 2M entry per PMD-mapped chunk with live text, else one 4K entry per busy page."""
        n4, n2 = super().text_tlb_entries()
        live: dict[int, int] = {}
        for text in self.busy.values():
            live[text.chunk.addr] = live.get(text.chunk.addr, 0) + text.nr_pages
        for addr, n in live.items():
            chunk = self.chunks[addr]
            if chunk.pmd_huge:
                n2 += len(chunk.pmd_huge)
            else:
                n4 += n
        return n4, n2
