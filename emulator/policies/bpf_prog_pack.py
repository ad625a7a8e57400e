"""``bpf_prog_pack``: BPF programs packed in shared 2 MiB executable packs (Linux 5.18-6.13)."""

from __future__ import annotations

from dataclasses import dataclass

from emulator.errors import KernelFault
from emulator.policies.base import (
    BPF_BINARY_HEADER, PACK_FRAGMENTATION, PAGE_ROUNDING, PAGE_SIZE, Policy, pages, put, take,
)
from emulator.set_memory import set_memory_nx, set_memory_ro, set_memory_rox, set_memory_x
from emulator.text_poke import jump_label_add_module, text_poke_copy, text_poke_set

#: kernel/bpf/core.c: BPF_PROG_PACK_SIZE = SZ_2M * num_possible_nodes() (one node here).
BPF_PROG_PACK_SIZE = 2 << 20
BPF_PROG_CHUNK_SHIFT = 6
BPF_PROG_CHUNK_SIZE = 1 << BPF_PROG_CHUNK_SHIFT
BPF_PROG_CHUNK_COUNT = BPF_PROG_PACK_SIZE // BPF_PROG_CHUNK_SIZE
PACK_PAGES = BPF_PROG_PACK_SIZE // PAGE_SIZE

_ZEROS: dict[int, bytes] = {}
_ONES: dict[int, bytes] = {}


class bpf_prog_pack:  # noqa: N801 - the kernel's struct name
    """A 2 MiB pack: its vmalloc area and a chunk bitmap (one byte per 64 B chunk)."""

    __slots__ = ("area", "bitmap", "free")

    def __init__(self, area):
        self.area = area
        self.bitmap = bytearray(BPF_PROG_CHUNK_COUNT)
        self.free = BPF_PROG_CHUNK_COUNT


@dataclass
class BpfProgPack(Policy):
    """Linux 5.18-6.13: BPF JIT images in 64-byte chunks of shared 2 MiB ROX packs, written by text_poke.

    Modules as ``legacy`` (6.1) or, with ``mod_mem_areas``, as seven
    execmem areas (6.4+ ``mod_mem_type``).  A new pack is one
    ``module_alloc(2 MiB)`` made RO+X; a program that fits a pack costs
    only local flushes; an emptied pack is a reset-perms vfree.
    """

    #: 6.4+ module loader: one execmem area per ``mod_mem_type`` (seven), not core + init.
    mod_mem_areas: bool = False
    #: 6.2+ native ``set_memory_rox`` (one CPA instead of ro + x; aliases always processed, NX stripped).
    native_rox: bool = False
    #: Every CPA flush is a full flush (as measured on 6.12).
    cpa_flush_full: bool = False
    #: 6.4-6.13 ``do_init_module`` -> ``module_enable_rodata_ro(mod, true)`` makes rodata and init
    #: rodata read-only again before ro_after_init (traced on 6.12); 6.14+
    #: ``module_enable_rodata_ro_after_init`` does ro_after_init only (traced on 7.2).
    after_init_rodata: bool = True
    #: 6.9+ vmalloc: one vmap node per possible CPU, each with pools of purged VA by size that its
    #: CPUs' vmallocs take first (mm/vmalloc.c ``node_alloc``, ``decay_va_pool_node``).
    vmap_nodes: bool = False
    #: ``decay_va_pool_node`` as 6.9 wrote it: a pool of fewer than 4 areas decays whole (``len >> 2``
    #: is 0 and the loop's ``--n_decay`` wraps); reworked in 2025 to keep it (6.18, 7.2).
    decay_small_pools: bool = True

    PRESETS = {
        "linux-6.1": {},
        "linux-6.12": {"mod_mem_areas": True, "native_rox": True, "cpa_flush_full": True, "vmap_nodes": True},
    }

    def attach(self, k) -> None:
        super().attach(k)
        k.cpa_alias_nx_kludge = not self.native_rox
        k.cpa_flush_full = self.cpa_flush_full
        if self.vmap_nodes:
            k.vm.use_vmap_nodes(k.nr_cpus, self.decay_small_pools)
        self.packs: list[bpf_prog_pack] = []

    def make_rox(self, area, first: int, n: int) -> None:
        """Text made read-only + executable: ``set_memory_rox`` (6.2+) or ro then x."""
        if self.native_rox:
            set_memory_rox(self.k, area, first, n)
        else:
            set_memory_ro(self.k, area, first, n)
            set_memory_x(self.k, area, first, n)

    def image_alloc(self, nbytes: int):
        area = self.module_alloc(pages(nbytes))
        self.make_rox(area, 0, area.nr_pages)
        return area

    # -- BPF: kernel/bpf/core.c bpf_prog_pack_alloc / bpf_prog_pack_free ----------

    def bpf_prog_load(self, id: int, size: int) -> None:
        """``bpf_jit_binary_pack_alloc``: round_up(size + hdr + 16, 64) from the first pack with room."""
        k = self.k
        nbytes = (size + BPF_BINARY_HEADER + 16 + BPF_PROG_CHUNK_SIZE - 1) & -BPF_PROG_CHUNK_SIZE
        if nbytes > BPF_PROG_PACK_SIZE:
            nbytes = pages(nbytes) * PAGE_SIZE
            put(self.progs, id, (self.image_alloc(nbytes), -1, 0, nbytes - size), "bpf prog")
            k.waste(PAGE_ROUNDING, nbytes - size)
            return
        if id in self.progs:
            raise KernelFault(f"bpf prog id {id} is already live")
        nbits = nbytes >> BPF_PROG_CHUNK_SHIFT
        zeros = _ZEROS.get(nbits)
        if zeros is None:
            zeros = _ZEROS[nbits] = bytes(nbits)
            _ONES[nbits] = b"\x01" * nbits
        for pack in self.packs:
            if pack.free >= nbits:
                pos = pack.bitmap.find(zeros)
                if pos >= 0:
                    break
        else:
            pack = self.alloc_new_pack()
            pos = 0
        pack.bitmap[pos:pos + nbits] = _ONES[nbits]
        pack.free -= nbits
        self.progs[id] = (pack, pos, nbits, 0)
        k.waste(PACK_FRAGMENTATION, -(nbits << BPF_PROG_CHUNK_SHIFT))
        text_poke_copy(k, (pos << BPF_PROG_CHUNK_SHIFT) & (PAGE_SIZE - 1), size)  # bpf_arch_text_copy

    def alloc_new_pack(self) -> bpf_prog_pack:
        """``alloc_new_pack``: module_alloc(2 MiB), INT3 fill, reset-perms flag, RO+X."""
        area = self.module_alloc(PACK_PAGES)
        self.make_rox(area, 0, PACK_PAGES)
        pack = bpf_prog_pack(area)
        self.packs.append(pack)
        self.k.stat["emu_pack_new"] += 1
        self.k.waste(PACK_FRAGMENTATION, BPF_PROG_PACK_SIZE)
        return pack

    def bpf_prog_free(self, id: int) -> None:
        """``bpf_prog_pack_free``: INT3 over the chunks (text_poke_set); an empty pack is vfree'd."""
        k = self.k
        pack, pos, nbits, rounding = take(self.progs, id, "bpf prog")
        if pos < 0:
            k.vm.vfree(pack)
            k.waste(PAGE_ROUNDING, -rounding)
            return
        text_poke_set(k, (pos << BPF_PROG_CHUNK_SHIFT) & (PAGE_SIZE - 1), nbits << BPF_PROG_CHUNK_SHIFT)
        pack.bitmap[pos:pos + nbits] = _ZEROS[nbits]
        pack.free += nbits
        k.waste(PACK_FRAGMENTATION, nbits << BPF_PROG_CHUNK_SHIFT)
        if pack.free == BPF_PROG_CHUNK_COUNT:
            self.packs.remove(pack)
            k.stat["emu_pack_free"] += 1
            k.waste(PACK_FRAGMENTATION, -BPF_PROG_PACK_SIZE)
            k.vm.vfree(pack.area)

    # -- modules (6.4+ mod_mem_type layout) ---------------------------------------

    def module_text_alloc(self, nr_pages: int):
        """Memory for MOD_TEXT / MOD_INIT_TEXT (``execmem_alloc(EXECMEM_MODULE_TEXT)``)."""
        return self.module_alloc(nr_pages)

    def module_data_alloc(self, nr_pages: int):
        """Memory for the data types (``execmem_alloc(EXECMEM_MODULE_DATA)``)."""
        return self.module_alloc(nr_pages)

    def module_text_free(self, area) -> None:
        self.k.vm.vfree(area)

    def module_text_rox(self, area, n: int) -> None:
        """``module_enable_text_rox``."""
        self.make_rox(area, 0, n)

    def module_load(self, id: int, sections: tuple[int, ...], patch_sites: int) -> None:
        """6.4+ ``load_module`` with ``mod_mem_areas``: one area per non-empty ``mod_mem_type``.

        ``complete_formation``: ``module_enable_rodata_ro(mod, false)``
        (rodata, init rodata), ``module_enable_data_nx`` (5 data types),
        ``module_enable_text_rox`` (text, init text); ``do_init_module``:
        ro_after_init (see ``after_init_rodata``), replayed at the init free
        (:meth:`Policy.do_init_module`).
        """
        if not self.mod_mem_areas:
            return super().module_load(id, sections, patch_sites)
        k = self.k
        npg = [pages(s) for s in sections]
        areas = [None] * 7
        for i, n in enumerate(npg):
            if n:
                areas[i] = self.module_text_alloc(n) if i in (0, 4) else self.module_data_alloc(n)
        rounding = sum(pages(s) * PAGE_SIZE - s for s in sections)
        k.waste(PAGE_ROUNDING, rounding)
        put(self.modules, id, [areas, None, rounding], "module")
        text, data, rodata, ro_ai, itext, idata, irodata = range(7)
        for i in (rodata, irodata):
            if areas[i]:
                set_memory_ro(k, areas[i], 0, npg[i])
        for i in (data, rodata, ro_ai, idata, irodata):
            if areas[i]:
                set_memory_nx(k, areas[i], 0, npg[i])
        for i in (text, itext):
            if areas[i]:
                self.module_text_rox(areas[i], npg[i])
        jump_label_add_module(k, patch_sites)

        def do_init_module():
            for i in (rodata, irodata, ro_ai) if self.after_init_rodata else (ro_ai,):
                if areas[i]:
                    set_memory_ro(k, areas[i], 0, npg[i])
        self.modules[id].append(do_init_module)

    def module_init_free(self, id: int) -> None:
        if not self.mod_mem_areas:
            return super().module_init_free(id)
        mod = self.modules.get(id)
        if mod is None:
            raise KernelFault(f"init free of unknown module id {id}")
        self.do_init_module(mod)
        self._free_areas(mod[0], (4, 5, 6))

    def _free_areas(self, areas, which) -> None:
        for i in which:
            if areas[i] is not None:
                if i in (0, 4):
                    self.module_text_free(areas[i])
                else:
                    self.k.vm.vfree(areas[i])
                areas[i] = None

    def module_unload(self, id: int) -> None:
        """6.4+ ``free_module`` -> ``free_mod_mem``: every type in enum order but MOD_DATA, which
        "hosts mod, so free it at last" (init types are already gone after ``do_free_init``)."""
        if not self.mod_mem_areas:
            return super().module_unload(id)
        mod = take(self.modules, id, "module")
        self.do_init_module(mod)
        areas, _, rounding = mod[:3]
        self._free_areas(areas, (0, 2, 3, 4, 5, 6, 1))
        self.k.waste(PAGE_ROUNDING, -rounding)

    # -- final state -----------------------------------------------------------

    def module_text_areas(self):
        """Areas holding module text: MOD_TEXT and MOD_INIT_TEXT (6.4+), else core and init."""
        for mod in self.modules.values():
            if self.mod_mem_areas:      # mod[0]: the 7 areas, enum mod_mem_type order (MOD_TEXT 0, MOD_INIT_TEXT 4)
                yield from (mod[0][i] for i in (0, 4) if mod[0][i] is not None)
            else:                       # mod[0], mod[1]: core and init
                yield from (a for a in mod[:2] if a is not None)

    def exec_areas(self):
        yield from self.module_text_areas()
        for obj in self.execs.values():
            yield obj[0]
        for obj in self.progs.values():
            if obj[1] < 0:              # an image larger than a pack has an area of its own
                yield obj[0]

    def text_tlb_entries(self) -> tuple[int, int]:
        """Module/exec areas as the base; packs: the pages that hold live chunks."""
        n4, n2 = super().text_tlb_entries()
        per_page = PAGE_SIZE // BPF_PROG_CHUNK_SIZE
        for pack in self.packs:
            bm = pack.bitmap
            n4 += sum(1 for p in range(PACK_PAGES) if any(bm[p * per_page:(p + 1) * per_page]))
        return n4, n2
