"""The emulated machine: its configuration (:class:`Machine`) and its booted state (:class:`Kernel`).

A :class:`Machine` is a frozen, hashable description that goes into run specs;
:meth:`Machine.boot` turns it into a :class:`Kernel`, the mutable state one
replay works on: page allocator, direct map, vmalloc/module ranges, TLB
counters and memory-waste accounting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

from emulator.direct_map import DirectMap
from emulator.page_alloc import PageAllocator
from emulator.result import WASTE_CAUSES
from emulator.tlb import TLB_SINGLE_PAGE_FLUSH_CEILING
from emulator.vmalloc import Vmalloc
from traces.errors import PermtraceError, TraceError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: Per-op counters every replay reports (kernel spelling where the kernel has one).
EVENT_COUNTERS: tuple[str, ...] = (
    "emu_shootdowns", "emu_shootdown_ipis",
    "emu_flush_tlb_all", "emu_flush_tlb_kernel_range", "emu_cpa_flush",
    "emu_local_flush", "emu_sync_core_ipis", "emu_text_poke_bp_batches",
    "nr_tlb_remote_flush", "nr_tlb_remote_flush_received",
    "emu_vmap_purges", "emu_vm_unmap_aliases", "emu_vm_reset_flush_all",
    "direct_map_level2_splits", "direct_map_level3_splits",
    "direct_map_level2_collapses", "direct_map_level3_collapses",
    "emu_vmalloc_pmd_splits", "emu_vmalloc_pmd_collapses",
    "emu_set_memory_ro", "emu_set_memory_rw", "emu_set_memory_x", "emu_set_memory_nx",
    "emu_set_memory_rox", "emu_set_direct_map_invalid",
    "emu_module_alloc", "emu_pack_new", "emu_pack_free",
    "emu_wx_pages",
)


def _kb(text: str | None) -> int | None:
    """Parse a ``DirectMap*`` value as ``/proc/meminfo`` prints it ("1234 kB" or "1234")."""
    if text is None or str(text).strip() == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(kB)?\s*", str(text))
    if not m:
        raise PermtraceError(f"bad DirectMap value {text!r} (expected kB, e.g. '2097152 kB')")
    return int(m.group(1))


def _spans(text: str, sep: str) -> list[tuple[int, int]]:
    """``OFFSET+PAGES`` items separated by ``sep``, parsed."""
    return [tuple(int(x) for x in b.split("+")) for b in filter(None, text.split(sep))]


@dataclass(frozen=True)
class Machine:
    """An x86-64 machine (4-level paging), as a kernel would see it at boot.

    nr_cpus
        Online CPUs; every all-CPU flush round sends ``nr_cpus - 1`` IPIs and
        ``lazy_max_pages = fls(nr_cpus) * 32 MiB / 4 KiB`` (mm/vmalloc.c).
    mem_bytes
        Physical memory, bytes (rounded down to 2 MiB pageblocks).
    direct_map
        ``(DirectMap4k, DirectMap2M, DirectMap1G)`` in kB as /proc/meminfo
        shows them, or None for a freshly booted map (first 2 MiB at 4K,
        rest of the first GiB at 2M, 1G pages above).
    fragmentation
        ``"fresh"``, ``"aged"`` or the text of a ``/proc/buddyinfo``: how
        scattered unmovable allocations land (see :mod:`emulator.page_alloc`).
    kaslr
        Randomize the module-area load offset (1..1024 pages,
        ``get_module_load_offset``); the 6.18 ground-truth host ran without.
    tlb_single_page_flush_ceiling
        Pages above which a ranged flush becomes a full one (arch/x86/mm/tlb.c).
    vmalloc_busy
        VA of the vmalloc range already allocated at boot of the replay, as
        ``OFFSET+PAGES[@ID],...`` in pages from ``VMALLOC_START`` (a recorded
        trace's ``vmalloc_busy`` metadata: the kernel's layout before tracing,
        which decides where new areas land and so how wide purges are).
        ``@ID``: the area is the trace's vmalloc ``ID`` (allocated before
        tracing, freed during it), which then takes this block.
    module_busy
        The same for the module/execmem range, ``OFFSET+PAGES,...`` in pages
        from ``MODULES_VADDR``: boot-time modules, packs and the load-offset
        hole, so the replay's executable areas land where the kernel's did
        (replaces the ``kaslr`` offset).
    vmap_pools
        Areas in the 6.9+ vmap node pools at boot of the replay,
        ``OFFSET+PAGES/CPU,...``: VA in pages from ``VMALLOC_START`` (guard
        included) and the CPU whose node's pool holds it, each pool's head
        last (a recorded trace's ``vmap_pools`` metadata; free VA for a
        policy without vmap nodes).
    execmem_cache
        The execmem ROX cache's chunks at boot of the replay,
        ``OFFSET+PAGES[:BUSY+PAGES...],...``: each chunk's VA in pages from
        ``MODULES_VADDR`` (inside :attr:`module_busy`), then the ranges of it
        already holding text, in pages from the chunk (a recorded trace's
        ``execmem_cache`` metadata; used by the ``execmem_rox`` policy).
    """

    nr_cpus: int = 64
    mem_bytes: int = 64 << 30
    direct_map: tuple[int, int, int] | None = None
    fragmentation: str = "fresh"
    kaslr: bool = True
    tlb_single_page_flush_ceiling: int = TLB_SINGLE_PAGE_FLUSH_CEILING
    vmalloc_busy: str = ""
    module_busy: str = ""
    vmap_pools: str = ""
    execmem_cache: str = ""

    def __post_init__(self) -> None:
        if self.nr_cpus < 1:
            raise PermtraceError(f"nr_cpus must be >= 1, got {self.nr_cpus}")
        if self.mem_bytes < (64 << 20):
            raise PermtraceError(f"mem_bytes must be at least 64 MiB, got {self.mem_bytes}")
        if self.direct_map is not None:
            object.__setattr__(self, "direct_map", tuple(int(v) for v in self.direct_map))
            if len(self.direct_map) != 3 or min(self.direct_map) < 0:
                raise PermtraceError(f"direct_map must be (DirectMap4k, DirectMap2M, DirectMap1G) kB, got {self.direct_map}")
        if self.vmalloc_busy and not re.fullmatch(r"\d+\+\d+(@\d+)?(,\d+\+\d+(@\d+)?)*", self.vmalloc_busy):
            raise PermtraceError(f"vmalloc_busy must be 'OFFSET+PAGES[@ID],...' (pages), got {self.vmalloc_busy[:40]!r}")
        if self.module_busy and not re.fullmatch(r"\d+\+\d+(,\d+\+\d+)*", self.module_busy):
            raise PermtraceError(f"module_busy must be 'OFFSET+PAGES,...' (pages), got {self.module_busy[:40]!r}")
        if self.vmap_pools and not re.fullmatch(r"\d+\+\d+/\d+(,\d+\+\d+/\d+)*", self.vmap_pools):
            raise PermtraceError(f"vmap_pools must be 'OFFSET+PAGES/CPU,...' (pages), got {self.vmap_pools[:40]!r}")
        if self.execmem_cache and not re.fullmatch(r"\d+\+\d+(:\d+\+\d+)*(,\d+\+\d+(:\d+\+\d+)*)*",
                                                   self.execmem_cache):
            raise PermtraceError("execmem_cache must be 'OFFSET+PAGES[:BUSY+PAGES...],...' (pages), "
                                 f"got {self.execmem_cache[:40]!r}")
        if self.fragmentation not in ("fresh", "aged") and "Node" not in self.fragmentation:
            raise PermtraceError(
                f"fragmentation must be 'fresh', 'aged' or /proc/buddyinfo text, got {self.fragmentation[:40]!r}")

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str | None = None, **overrides) -> Machine:
        """A machine from a trace's ``permtrace.*`` metadata (prefix stripped); overrides win.

        Uses ``nr_cpus``, ``mem_total_bytes``, ``DirectMap4k/2M/1G``,
        ``buddyinfo`` and the starting layout (``vmalloc_busy``, ``module_busy``, ``vmap_pools``,
        ``execmem_cache``) when present; anything missing
        keeps the default.  A bad value raises :class:`TraceError` naming
        ``source`` (the trace file).
        """
        known = {f.name for f in fields(cls)}
        bad = set(overrides) - known
        if bad:
            raise PermtraceError(f"unknown machine field(s) {sorted(bad)}; valid: {sorted(known)}")
        try:
            kw: dict[str, object] = {}
            if meta.get("nr_cpus"):
                kw["nr_cpus"] = int(meta["nr_cpus"])
            if meta.get("mem_total_bytes"):
                kw["mem_bytes"] = int(meta["mem_total_bytes"])
            dm = [_kb(meta.get(k)) for k in ("DirectMap4k", "DirectMap2M", "DirectMap1G")]
            if any(v is not None for v in dm):
                kw["direct_map"] = tuple(v or 0 for v in dm)
            if meta.get("buddyinfo", "").strip():
                kw["fragmentation"] = meta["buddyinfo"]
            for key in ("vmalloc_busy", "module_busy", "vmap_pools", "execmem_cache"):
                if meta.get(key):
                    kw[key] = meta[key]
            return cls(**{**kw, **overrides})
        except (ValueError, PermtraceError) as e:
            raise TraceError(f"bad machine metadata: {e}", file=source,
                             hint="correct or remove that permtrace.* key ('permtrace trace info' lists them)") from None

    def vmalloc_blocks(self) -> list[tuple[int, int, int | None]]:
        """:attr:`vmalloc_busy` parsed: ``(offset, pages, id or None)``."""
        out = []
        for b in filter(None, self.vmalloc_busy.split(",")):
            span, _, id_ = b.partition("@")
            off, _, n = span.partition("+")
            out.append((int(off), int(n), int(id_) if id_ else None))
        return out

    def module_blocks(self) -> list[tuple[int, int]]:
        """:attr:`module_busy` parsed: ``(offset, pages)``."""
        return _spans(self.module_busy, ",")

    def execmem_chunks(self) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """:attr:`execmem_cache` parsed: ``(offset, pages, [(busy offset, busy pages), ...])``."""
        chunks = (_spans(c, ":") for c in filter(None, self.execmem_cache.split(",")))
        return [(*spans[0], spans[1:]) for spans in chunks]

    def vmap_pool_blocks(self) -> list[tuple[int, int, int]]:
        """:attr:`vmap_pools` parsed: ``(offset, pages, cpu)``."""
        return [(int(off), int(n), int(cpu)) for off, n, cpu in
                (re.split(r"[+/]", b) for b in filter(None, self.vmap_pools.split(",")))]

    @property
    def lazy_max_pages(self) -> int:
        """``lazy_max_pages()`` (mm/vmalloc.c): fls(nr_cpus) * 32 MiB / PAGE_SIZE."""
        return self.nr_cpus.bit_length() * ((32 << 20) >> PAGE_SHIFT)

    def boot(self, seed: int = 0, boot_holes: bool = True) -> Kernel:
        """The booted kernel; ``boot_holes=False`` leaves ``k.pages.boot_holes()`` to the caller."""
        return Kernel(self, seed, boot_holes)


class Kernel:
    """The mutable state of one emulated kernel.

    Counters live in one dict per op kind (``per_op``); ``stat`` points at
    the dict of the op being replayed, so every increment is attributed to
    the event that caused it (deferred work included) at the cost of one
    dict update.  Totals are summed at the end.

    Kernel-release behaviours that policies switch (``attach``):

    cpa_alias_nx_kludge
        <= 6.1: ``checkalias = masks != _PAGE_NX``, so set_memory_x/nx skip
        the direct-map alias and may flush per page (``__cpa_flush_tlb``).
        6.2+: aliases always processed with NX stripped, ``force_flush_all``.
    cpa_flush_full
        6.12 preset: every CPA flush is a full flush.
    cpa_flush_kernel_range
        6.15+: ``cpa_flush`` goes through ``flush_tlb_kernel_range`` (a full
        flush there is ``do_flush_tlb_all`` but not ``nr_tlb_remote_flush``).
    cpa_collapse
        6.15+: ``set_memory_rox`` passes ``CPA_COLLAPSE``.

    Concurrency (a trace's ``concurrent`` spans, set by :func:`emulator.replay`):
    ``concurrent`` is called once, at the current op's first point where other
    CPUs' work shows (after its first CPA, or in ``vm_reset_perms`` before its
    purge), to run the events that began while it was in progress; meanwhile
    ``deferred`` collects the work those events finish only after the op
    (:meth:`defer`).
    """

    def __init__(self, machine: Machine, seed: int, boot_holes: bool = True) -> None:
        self.machine = machine
        self.nr_cpus = machine.nr_cpus
        self.ceiling = machine.tlb_single_page_flush_ceiling
        self.rng = np.random.default_rng(seed)
        self.per_op: dict[str, dict[str, int]] = {}
        self.stat = self.op_stats("boot")
        self.cpa_alias_nx_kludge = True
        self.cpa_flush_full = False
        self.cpa_flush_kernel_range = False
        self.cpa_collapse = False
        self.now = 0
        self.concurrent = None
        self.deferred: list | None = None
        # waste accounting, bytes, per cause in WASTE_CAUSES order
        self.waste_live = [0] * len(WASTE_CAUSES)
        self.waste_peak = [0] * len(WASTE_CAUSES)
        self.waste_dt = [0] * len(WASTE_CAUSES)      # sum of delta * time of each change, byte-ns
        self.waste_peak_total = 0
        self.waste_total = 0          # sum(waste_live)
        self._waste_ts = None
        self.pages = PageAllocator(machine.mem_bytes, machine.fragmentation, self.rng, boot_holes)
        self.dm = DirectMap(self.pages.nr_regions, machine.direct_map)
        offset = int(self.rng.integers(1, 1025)) if machine.kaslr else 0
        self.vm = Vmalloc(self, machine.lazy_max_pages, module_offset=0 if machine.module_busy else offset,
                          busy=machine.vmalloc_blocks(), module_busy=machine.module_blocks(),
                          pools=machine.vmap_pool_blocks())

    def defer(self, work) -> None:
        """For an event running concurrently with an op (``deferred`` set): run ``work()`` once that
        op is done, charged to the event."""
        self.deferred.append((self.stat, self.now, work))

    def op_stats(self, op: str) -> dict[str, int]:
        d = self.per_op.get(op)
        if d is None:
            d = self.per_op[op] = dict.fromkeys(EVENT_COUNTERS, 0)
        return d

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(EVENT_COUNTERS, 0)
        for d in self.per_op.values():
            for name in EVENT_COUNTERS:
                out[name] += d[name]
        return out

    def waste(self, cause: int, delta: int) -> None:
        """Change live waste of ``WASTE_CAUSES[cause]`` by ``delta`` bytes at time ``self.now``.

        The time integral is kept in closed form: a change of ``delta`` at
        time ``t`` adds ``delta * (T - t)`` to it by the end ``T``, so only
        ``delta * t`` is summed here (``waste_dt``) and the integral is
        ``live * T - waste_dt`` (:meth:`waste_counters`).  Time never runs
        backwards here: ``t`` is the latest ``now`` seen so far.
        """
        now = self.now
        last = self._waste_ts
        if last is None or now > last:
            self._waste_ts = last = now
        live = self.waste_live
        v = live[cause] + delta
        live[cause] = v
        self.waste_dt[cause] += delta * last
        if v > self.waste_peak[cause]:
            self.waste_peak[cause] = v
        total = self.waste_total = self.waste_total + delta
        if total > self.waste_peak_total:
            self.waste_peak_total = total

    def waste_counters(self, t_start: int, t_end: int) -> dict[str, int]:
        """Live, peak and time-weighted mean waste (bytes) over ``[t_start, t_end]`` ns."""
        self.now = t_end
        self.waste(0, 0)  # the end of the integral: the later of t_end and the last change
        end = self._waste_ts
        integral = [v * end - a for v, a in zip(self.waste_live, self.waste_dt)]   # byte-ns
        span = max(t_end - t_start, 1)
        out = {"emu_waste_bytes": sum(self.waste_live),
               "emu_waste_peak_bytes": self.waste_peak_total,
               "emu_waste_mean_bytes": sum(integral) // span}
        for i, cause in enumerate(WASTE_CAUSES):
            out[f"emu_waste_bytes_{cause}"] = self.waste_live[i]
            out[f"emu_waste_peak_bytes_{cause}"] = self.waste_peak[i]
            out[f"emu_waste_mean_bytes_{cause}"] = integral[i] // span
        return out
