"""The policy contract and its base behaviour (the Linux 5.10 paths).

A policy decides how each trace op is served, using the kernel primitives
(:mod:`emulator.vmalloc`, :mod:`emulator.set_memory`, :mod:`emulator.text_poke`).

Hook contract (one hook per op, called by :func:`emulator.replay` in trace
order, ``self.k`` is the :class:`emulator.machine.Kernel`, ``k.now`` the
event's ``ts_ns``):

==========================  ==================================================
``module_load(id, sections, patch_sites)``  load + init of a module; ``sections`` are the 7
                            ``SECTION_COLUMNS`` sizes in bytes
``module_init(id)``         its init returned (``do_init_module``: ro_after_init -> RO)
``module_init_free(id)``    init sections freed (``do_free_init``)
``module_unload(id)``       ``free_module``
``bpf_prog_load(id, size)`` JIT image of ``size`` bytes
``bpf_prog_free(id)``
``exec_alloc(id, size, owner)`` / ``exec_free(id)``  kprobes, ftrace, trampolines
``vmalloc(id, size)`` / ``vfree(id)``  plain non-executable vmalloc
``text_patch(sites)``       runtime patching of ``sites`` code sites
``mem_pressure(size)``      shrinkers asked for ``size`` bytes
==========================  ==================================================

A hook raises :class:`emulator.errors.KernelFault` for an event it cannot
serve (unknown id, id already live).  Every base hook is the legacy
behaviour, so a policy overrides only what it changes and may call
``super()``.  Parameters are dataclass fields with defaults (bool, int);
``PRESETS`` maps alias names (kernel releases) to parameter values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from emulator.direct_map import NX, P
from emulator.errors import KernelFault
from emulator.result import WASTE_CAUSES
from emulator.set_memory import set_memory_nx, set_memory_ro, set_memory_x
from emulator.text_poke import jump_label_add_module, text_poke_bp_batch
from emulator.vmalloc import VFREE, VM_FLUSH_RESET_PERMS, VMALLOC, vm_struct

PAGE_SIZE = 4096
PAGE_ROUNDING = WASTE_CAUSES.index("page_rounding")
PACK_FRAGMENTATION = WASTE_CAUSES.index("pack_fragmentation")
CACHE = WASTE_CAUSES.index("cache")

#: ``sizeof(struct bpf_binary_header)`` (5.10: u32 pages + aligned image) - bytes.
BPF_BINARY_HEADER = 8


def pages(nbytes: int) -> int:
    return (nbytes + PAGE_SIZE - 1) >> 12


def take(live: dict, id: int, what: str):
    """Pop a live object by id, or fault naming what was expected."""
    try:
        return live.pop(id)
    except KeyError:
        raise KernelFault(f"free of unknown {what} id {id} (never allocated or already freed)") from None


def put(live: dict, id: int, obj, what: str) -> None:
    if id in live:
        raise KernelFault(f"{what} id {id} is already live (ids must be unique until freed)")
    live[id] = obj


@dataclass
class Policy:
    """Base policy: the old path of Linux 5.10 (module_alloc + set_memory_* per allocation)."""

    PRESETS: ClassVar[dict[str, dict[str, object]]] = {}
    #: Simplifications a user should know about, shown by ``permtrace policies -v``.
    SIMPLIFICATIONS: ClassVar[tuple[str, ...]] = (
        "bpf_trampoline/dispatcher pages are modelled like kprobes (ro + x); 5.10 mapped them W+X",
        "a trace without module_init events replays do_init_module's after-init set_memory_ro at the init free",
        "a policy that overrides vmalloc/vfree gets thread_stack vmallocs without their THREAD_ALIGN",
    )

    def params(self) -> dict[str, object]:
        """Resolved parameter values (for run specs)."""
        return asdict(self)

    def attach(self, k) -> None:
        """Bind to a booted kernel and set the release's CPA behaviour (5.10: NX-only skips the alias)."""
        self.k = k
        self.vm = k.vm
        k.cpa_alias_nx_kludge = True
        self.modules: dict[int, list] = {}
        self.progs: dict[int, object] = {}
        self.execs: dict[int, object] = {}

    # -- helpers -----------------------------------------------------------------

    def module_alloc(self, nr_pages: int, flags: int = VM_FLUSH_RESET_PERMS) -> vm_struct:
        """``module_alloc``: PAGE_KERNEL vmalloc in the module range; reset-perms flag as the loader sets it."""
        k = self.k
        k.stat["emu_module_alloc"] += 1
        return k.vm.vmalloc(nr_pages, k.vm.module_range, flags)

    def image_alloc(self, nbytes: int) -> vm_struct:
        """``module_alloc`` + ``set_vm_flush_reset_perms`` + ``set_memory_ro`` + ``set_memory_x``.

        The old path of kprobes ``alloc_insn_page``, ftrace trampolines and
        ``bpf_jit_binary_lock_ro`` (5.1-6.1); ``nbytes`` already rounded by the caller.
        """
        k = self.k
        n = pages(nbytes)
        area = self.module_alloc(n)
        set_memory_ro(k, area, 0, n)
        set_memory_x(k, area, 0, n)
        return area

    # -- modules -----------------------------------------------------------------

    def module_load(self, id: int, sections: tuple[int, ...], patch_sites: int) -> None:
        """5.10 ``load_module``: core and init allocations, 9 ro / 5 nx / 2 x, then ro_after_init.

        ``layout_sections`` order text | rodata | ro_after_init | data, each
        page aligned; init text | rodata | data.  ``complete_formation`` runs
        ``module_enable_ro(false)``, ``module_enable_nx``, ``module_enable_x``;
        ``do_init_module`` repeats ``module_enable_ro(true)`` with ro_after_init.
        Jump-label sites are patched with ``text_poke_bp`` batches.
        """
        k = self.k
        text, data, rodata, ro_ai, itext, idata, irodata = sections
        t, r, a, d = pages(text), pages(rodata), pages(ro_ai), pages(data)
        it, ir, idd = pages(itext), pages(irodata), pages(idata)
        core = self.module_alloc(max(t + r + a + d, 1))
        init = self.module_alloc(it + ir + idd) if it + ir + idd else None
        rounding = sum(pages(s) * PAGE_SIZE - s for s in sections)
        k.waste(PAGE_ROUNDING, rounding)
        put(self.modules, id, [core, init, rounding], "module")

        def cpa(set_memory, area, first, n):
            # an absent init allocation still costs the call's vm_unmap_aliases (16 purges a load on 6.1)
            set_memory(k, area or core, first, n if area else 0)

        def module_enable_ro():
            cpa(set_memory_ro, core, 0, t)
            cpa(set_memory_ro, core, t, r)
            cpa(set_memory_ro, init, 0, it)
            cpa(set_memory_ro, init, it, ir)

        module_enable_ro()                                # complete_formation
        for area, first, n in ((core, t, r), (core, t + r, a), (core, t + r + a, d),
                               (init, it, ir), (init, it + ir, idd)):
            cpa(set_memory_nx, area, first, n)            # module_enable_nx
        cpa(set_memory_x, core, 0, t)                     # module_enable_x
        cpa(set_memory_x, init, 0, it)
        jump_label_add_module(k, patch_sites)             # jump labels / static calls of the new module

        def do_init_module():                             # module_enable_ro(mod, true)
            module_enable_ro()
            cpa(set_memory_ro, core, t + r, a)
        self.modules[id].append(do_init_module)

    def module_init(self, id: int) -> None:
        """``do_init_module`` after the module's init returned: its after-init ``set_memory_ro``."""
        mod = self.modules.get(id)
        if mod is None:
            raise KernelFault(f"module_init of unknown module id {id}")
        self.do_init_module(mod)

    def do_init_module(self, mod: list) -> None:
        """The after-init ``set_memory_ro`` of ``do_init_module``, if not yet done.

        In the kernel it follows ``load_module``'s ``free_copy`` (the vfree of
        the module's file copy), so its purge flushes that copy.  The trace's
        ``module_init`` event says when; a trace without one (an older
        importer, a recorder that cannot see it) gets it at the module's init
        free (or unload), the next op of that module.
        """
        if len(mod) > 3:
            mod.pop()()

    def module_init_free(self, id: int) -> None:
        """``do_free_init``: vfree of the init allocation (VM_FLUSH_RESET_PERMS)."""
        mod = self.modules.get(id)
        if mod is None:
            raise KernelFault(f"init free of unknown module id {id}")
        self.do_init_module(mod)
        if mod[1] is not None:
            self.k.vm.vfree(mod[1])
            mod[1] = None

    def module_unload(self, id: int) -> None:
        """``free_module``: vfree init (if still there) and core, each with reset perms."""
        mod = take(self.modules, id, "module")
        self.do_init_module(mod)
        core, init, rounding = mod[:3]
        if init is not None:
            self.k.vm.vfree(init)
        self.k.vm.vfree(core)
        self.k.waste(PAGE_ROUNDING, -rounding)

    # -- BPF ---------------------------------------------------------------------

    def bpf_prog_load(self, id: int, size: int) -> None:
        """5.10 ``bpf_jit_binary_alloc``: round_up(size + hdr + 128, 4K), then ro + x."""
        nbytes = pages(size + BPF_BINARY_HEADER + 128) * PAGE_SIZE
        put(self.progs, id, (self.image_alloc(nbytes), nbytes - size), "bpf prog")
        self.k.waste(PAGE_ROUNDING, nbytes - size)

    def bpf_prog_free(self, id: int) -> None:
        """``bpf_jit_binary_free``: vfree with reset perms."""
        area, rounding = take(self.progs, id, "bpf prog")
        self.k.vm.vfree(area)
        self.k.waste(PAGE_ROUNDING, -rounding)

    # -- other executable memory -----------------------------------------------

    def exec_alloc(self, id: int, size: int, owner: int) -> None:
        """kprobes/ftrace/trampolines: ``module_alloc`` + reset perms + ro + x."""
        nbytes = pages(max(size, 1)) * PAGE_SIZE
        put(self.execs, id, (self.image_alloc(nbytes), nbytes - size), "exec")
        self.k.waste(PAGE_ROUNDING, nbytes - size)

    def exec_free(self, id: int) -> None:
        area, rounding = take(self.execs, id, "exec")
        self.k.vm.vfree(area)
        self.k.waste(PAGE_ROUNDING, -rounding)

    # -- plain vmalloc ---------------------------------------------------------

    def vmalloc(self, id: int, size: int) -> None:
        """A plain ``vmalloc`` of ``size`` bytes (``Vmalloc.run``).

        While neither this nor :meth:`vfree` is overridden, the replay hands
        the trace to ``Vmalloc.run``, which serves plain events itself.
        """
        k = self.k
        self.vm.run(((None, VMALLOC, id, size, k.now),), None, k.stat, k.stat)   # row: the replay's

    def vfree(self, id: int) -> None:
        """``vfree`` of a plain vmalloc (``Vmalloc.run``)."""
        k = self.k
        self.vm.run(((None, VFREE, id, 0, k.now),), None, k.stat, k.stat)

    # -- patching and pressure ---------------------------------------------------

    def text_patch(self, sites: int) -> None:
        """Static keys toggled: ``text_poke_bp`` batches."""
        text_poke_bp_batch(self.k, sites)

    def mem_pressure(self, size: int) -> None:
        """Shrinkers: the old path caches nothing."""

    # -- final state -----------------------------------------------------------

    def exec_areas(self):
        """Live areas holding executable code (for ``emu_text_tlb_entries_*``)."""
        for core, init, *_ in self.modules.values():
            yield core
            if init is not None:
                yield init
        for obj in self.progs.values():
            yield obj[0]
        for obj in self.execs.values():
            yield obj[0]

    def text_tlb_entries(self) -> tuple[int, int]:
        """(4K, 2M) TLB entries needed to map all live executable pages once."""
        n4 = n2 = 0
        for area in self.exec_areas():
            if area.prot is None:
                continue
            x = (np.frombuffer(bytes(area.prot), np.uint8) & (P | NX)) == P
            huge = area.pmd_huge or ()
            for pmd in huge:
                i0 = (pmd << 9) - area.addr
                if x[i0:i0 + 512].any():
                    n2 += 1
                    x[i0:i0 + 512] = False
            n4 += int(x.sum())
        return n4, n2
