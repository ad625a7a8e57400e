"""Kernel events -> workload ops (the trace) + what the kernel did (observations).

Both the ftrace text importer and ``permtrace record`` feed this converter
the same normalized kernel events, whichever way they were traced:

==============  =======================================================  ==========================================
method          6.18 host tracepoints                                     6.1 guest kprobes (qemu/init.sh)
==============  =======================================================  ==========================================
``alloc``       ``vmalloc:alloc_vmap_area``                               ``gt:alloc_va`` + ``gt:alloc_va_ret``
``free``        ``vmalloc:free_vmap_area_noflush``                        ``gt:free_va``
``purge``       ``vmalloc:purge_vmap_area_lazy`` (``num_purged > 0``)     ``gt:purge`` followed by ``gt:flush_krange``
``flush``       ``csd:csd_queue_cpu func=``, one round per sender         ``gt:on_each_cpu func=``
``text_poke``   --                                                        ``gt:text_poke_bp_batch nr=``
``module_*``    ``module:module_load`` / ``module_free``                  same
``execmem``     --                                                        ``gt:module_alloc`` on ``execmem_alloc`` (6.4+)
``free_node``   --                                                        ``gt:free_node`` (vmap_area flags, 6.9+)
``mark``        ``ftrace:print`` (``trace_marker``)                       same
==============  =======================================================  ==========================================

Guests traced by ``permtrace groundtruth qemu`` on 6.4+ have both columns:
the tracepoints report, the ``gt:purge`` kprobe still dates each purge's
snapshot of the lazy list (``purge_started``), and ``gt:unmap_aliases`` tells
a ``vm_reset_perms`` purge (``flush_dmap=1``).

What becomes a trace event (policy-neutral: what the workload asked for):

- an area in the *vmalloc* range -> ``vmalloc`` / ``vfree`` (size without
  the guard page ``__get_vm_area_node`` adds; the emulator adds it back);
- areas in the *exec* range (module / execmem range, ``MODULES_VADDR`` on)
  are how one kernel served a workload op, so they never become events
  themselves: they are attributed to a ``bpf_prog_load`` (``GT load i``
  markers or recorded ``bpf(2)`` load times), a ``module_load`` (the
  ``module:module_load`` tracepoint closing the loading task's window; the
  event takes the place of the window's first allocation), or,
  failing both, an ``exec_alloc`` with no owner;
- each ``text_poke_bp_batch`` -> one ``text_patch`` event (``patch_sites``
  = sites in the batch), because the batches, not the sites, cost IPIs;
- a program's release (``GT close``/``GT bpfF``) -> a ``bpf_prog_free`` where
  the kernel frees the program: its deferred free in a kworker, not the close
  (:meth:`KernelEventConverter._bpf_release`);
- what other CPUs did while a load or an init was changing permissions, or
  an init free was between its unmap and its reset's purge -> that op's
  ``concurrent`` span (logs with the purge kprobe, which show purges at their
  entry and what each purge swept): a lazy free counts only if the op's purge swept
  it (or, on the op's CPU, its own did), and an op (a load, an init, an
  unload) whose first purge swept frees that came after the op goes after them.

Observations (``kind``; ``value``; ``op`` = the op kind the kernel's work is
charged to, as the emulator charges it: to the event that triggered it):
``flush_tlb_all``, ``flush_tlb_kernel_range``, ``cpa_flush``,
``sync_core`` (IPI *rounds*, one per ``on_each_cpu_cond_mask`` call),
``vmap_purge`` (purges that flushed), ``vm_reset_flush_all`` (of the
full flushes, those of a ``vm_reset_perms`` that found nothing queued, so
that only its pages' direct-map range was flushed; kprobe logs only),
``exec_area_alloc``,
``direct_map_level{2,3}_{splits,collapses}`` (vmstat deltas).

Guests >= 6.2 traced by init.sh have both; the importer then ignores the
kprobes that duplicate an enabled tracepoint (``GT enabled:`` line).

Starting state that changes what the workload costs becomes *warmup*
events placed first (metadata ``warmup_events`` counts them; check-model
subtracts their replay): how full the current ``bpf_prog_pack`` was (one
program of that many bytes), and how many pages were already queued for the
lazy purge (one vmalloc + vfree of that size, from the first
``free_vmap_area_noflush``'s ``nr_lazy``).

Memory: events and observations are kept as Python lists of ints until the
end of the import (module and BPF windows are back-patched); a trace of
10^6 events needs ~0.3 GB, which is why very long recordings should be cut.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import islice, takewhile
from dataclasses import dataclass, field

import pyarrow as pa

from traces.importers.bpftool import BpfProg
from traces.schema import MAX_VA_SIZE_PAGES, OBSERVED_SCHEMA, SCHEMA, SECTION_COLUMNS, THREAD_ALIGN, THREAD_STACK

PAGE_SIZE = 4096
ULONG_MAX = (1 << 64) - 1
#: x86-64 ``MODULES_VADDR`` (``__START_KERNEL_map + KERNEL_IMAGE_SIZE``, no
#: KASLR) and above: module and execmem areas.  vmalloc is far below.
EXEC_RANGE_START = 0xFFFFFFFF80000000
VMALLOC_START = 0xFFFFC90000000000      # 4-level, no KASLR (the QEMU guests)
#: ``MODULES_VADDR`` of a KASLR kernel (``__START_KERNEL_map`` + 1 GiB ``KERNEL_IMAGE_SIZE``).
MODULES_VADDR = 0xFFFFFFFFC0000000
#: An execmem ROX cache chunk: ``PMD_SIZE``, aligned (``execmem_cache_populate``).
PMD_SIZE = 2 << 20
#: ``bpf_prog_pack`` areas: ``BPF_PROG_PACK_SIZE`` (2 MiB) + guard page.
BPF_PACK_AREA = 2 * 1024 * 1024 + PAGE_SIZE
#: A BPF load whose exec area has not shown up within this much trace time
#: (recorded loads only) fit an existing pack: emit it anyway (ns).
BPF_PENDING_NS = 100_000_000

#: IPI callback function -> observation kind (kernel function names).
FLUSH_KINDS = {
    "do_flush_tlb_all": "flush_tlb_all",          # arch/x86/mm/tlb.c flush_tlb_all()
    "do_kernel_range_flush": "flush_tlb_kernel_range",
    "__cpa_flush_tlb": "cpa_flush",               # arch/x86/mm/pat/set_memory.c cpa_flush()
    "do_sync_core": "sync_core",                  # arch/x86/kernel/alternative.c text_poke_sync()
}
SPLIT_KINDS = ("direct_map_level2_splits", "direct_map_level3_splits",
               "direct_map_level2_collapses", "direct_map_level3_collapses")
#: Comms of kernel threads doing deferred work on a workload's behalf
#: (gt_bpf.py's attribution rule: own PID + these).
KTHREAD_PREFIXES = ("kworker", "ksoftirqd", "rcu", "<idle>", "swapper", "migration", "kthreadd")

_GT_LOAD = re.compile(r"GT load (\d+)")             # gt_bpf.py (host)
_GT_CLOSE = re.compile(r"GT close (\d+)")
_GT_CASE = re.compile(r"GT case N=(\d+) K=(\d+)")   # qemu bpfload.c (guests): one case per process
_GT_BPFL = re.compile(r"GT bpfL (\d+)")
_GT_BPFF = re.compile(r"GT bpfF (\d+)")
_GT_DM = re.compile(r"GT dm \S+ .*\bl2=(\d+) l3=(\d+)")
#: Trace ids of programs alive at the start: kernel prog id + this (beyond GT indexes).
WARMUP_ID_BASE = 1 << 40
#: Guest BPF program ids: case number * this + index (indexes restart per case).
CASE_ID_STRIDE = 1_000_000
_GT_VMSTAT = re.compile(r"(direct_map_level[23]_(?:splits|collapses)) (\d+)")

#: include/linux/execmem.h ``enum execmem_type`` values the module loader uses.
EXECMEM_MODULE_TEXT, EXECMEM_MODULE_DATA = 0, 4
#: include/linux/module.h ``enum mod_mem_type`` (= SECTION_COLUMNS order).
MOD_TEXT, MOD_DATA, MOD_RODATA, MOD_RO_AFTER_INIT, MOD_INIT_TEXT, MOD_INIT_DATA, MOD_INIT_RODATA = range(7)

# event tuple layout (a list, back-patched): ts, cpu, op, id, size, owner, *sections, patch_sites
_N_SECT = len(SECTION_COLUMNS)


@dataclass
class _Window:
    """A task's exec-range allocations not yet claimed by a module_load."""

    rows: list[int] = field(default_factory=list)    # placeholder event rows, one per area
    areas: list[tuple[int, int]] = field(default_factory=list)  # (va_start, traced size)
    setmem: list[tuple[str, int, int]] = field(default_factory=list)  # (set_memory_*, addr, npages)
    execmem: list[tuple[int, int, int]] = field(default_factory=list)  # 6.4+: (execmem type, addr, bytes)
    cpa_row: int | None = None    # placeholder row at the window's first set_memory_* call
    cpa_end: int = 0              # rows emitted before its latest set_memory_* call


class KernelEventConverter:
    """Turns a time-ordered stream of kernel events into trace rows + observations.

    ``own_pid``: when set, only that task and kernel threads count as the
    workload (others are counted as noise); ``None`` = every task counts,
    except that a ``GT load``/``GT close`` marker protocol (gt_bpf.py) sets
    it to the marker writer's PID.  ``bpf_progs``: program sizes (and, when
    recorded, load/free times).
    """

    def __init__(self, *, own_pid: int | None = None, bpf_progs: list[BpfProg] | None = None) -> None:
        self.own_pid = own_pid
        # Programs standing for the starting state (add_warmup): loaded first, not observed.
        self._warmup: list[BpfProg] = []
        self.n_warmup = 0
        self.lazy_start: int | None = None         # lazily freed pages queued at start (-1: unknown)
        #: init.sh logs: the tracer is arming itself ("GT start" not yet seen); only the vmap
        #: areas are followed then, to know the starting state (sizes, pages queued at the start)
        self.setup = False
        self._setup_lazy = 0                       # pages freed lazily in setup since its last purge
        self._setup_lazy_areas: dict[int, int] = {}  # their areas: va -> pages (guard included)
        self._node: dict[int, int] = {}      # va -> the vmap node it was allocated for (6.9+ kprobe)
        self._setup_node: dict[int, int] = {}   # the same for the setup's queued areas
        self._lazy_known: list[tuple[int, int]] | None = []  # [va, end) freed lazily before the first purge
        self._purged_before_first_free = False
        self._area_pages: dict[int, int] = {}     # any task's live area -> pages incl. guard
        self._vm_spans: list[tuple[int, int]] = []  # [va, va + size) of every vmalloc event's area
        self._exec_spans: list[tuple[int, int]] = []  # [va, va + size) of every traced exec-range area
        self._pre_areas: list[tuple[int, int, int]] = []   # (va, pages, id): allocated before tracing
        self._texts: list[tuple[int, int]] = []    # [addr, addr + size) of every module text (6.4+)
        self._pool_ranges: list[tuple[int, int]] = []   # vmalloc VA the setup's purges swept
        self._pool_used: list[tuple[int, int]] = []     # areas allocated there since
        self._pool_start: list[tuple[int, int, int]] = []  # (va, pages, cpu): in a vmap pool at start
        self.events: list[list] = []
        self.obs: list[tuple[int, str, int, int | None]] = []   # ts, kind, value, event_row
        self.unused: Counter = Counter()
        self.observable: set[str] = set()          # kinds this source could have observed
        self._last: dict[int | None, int] = {}     # pid -> row of its latest event (None: other activity)
        self._sticky: dict[int | None, int] = {}   # pid -> row of the workload op it is serving
        self._last_vfree: int | None = None
        self.last_ts = 0
        self._vm: dict[int, int] = {}              # vmalloc-range va_start -> vmalloc id
        self._next_vm = 0
        self._exec: dict[int, tuple[str, int]] = {}  # exec va_start -> (owner kind, id)
        self._windows: dict[int, _Window] = {}     # pid -> module window
        self._modules: dict[str, int] = {}         # live module name -> id
        self._module_unload_rows: dict[int, int] = {}
        self._merged: dict[int, int] = {}          # placeholder row -> module_load row it merged into
        self._next_module = 0
        self._last_module_row: int | None = None
        self._next_exec = 0
        self._bpf_rows: dict[int, int] = {}        # bpf id -> row of its bpf_prog_load
        self._last_bpf_free_row: int | None = None
        self._loading: tuple[int, int] | None = None   # (pid, bpf id) of the marked load in progress
        self._prog_areas: dict[int, int] = {}      # vmalloc va_start -> bpf id whose load allocated it
        self._n_prog_areas: Counter = Counter()    # bpf id -> its live areas
        self._released: dict[int, None] = {}       # bpf ids released, deferred free not yet seen (FIFO)
        self._last_bpf_row: int | None = None
        self._case, self._case_size = 0, None
        #: (N, K) of a guest bpfload.c case -> jited_len (from its "GT bpf N= K= ..." console line)
        self.case_sizes: dict[tuple[int, int], int] = {}
        # id, size, name, ts, timed (a recorded load time, not a GT marker)
        self._pending_bpf: tuple[int, int | None, str | None, int, bool] | None = None
        self._round: dict[int, tuple[str, set]] = {}   # sender cpu -> (func, targets) of open CSD round
        # pid -> (ts, start, end) of a kprobe purge awaiting its flush
        self._pending_purge: dict[int, tuple[int, int, int]] = {}
        self._pending_alloc: dict[int, tuple[int, int]] = {}  # pid -> (size, vstart) awaiting kretprobe
        self._pending_poke: dict[int, tuple[int, int]] = {}   # pid -> (ts, cpu) of a batch of unknown nr
        self._pending_execmem: dict[int, tuple[int, int]] = {}  # pid -> (execmem type, size) awaiting ret
        #: 6.4+ module memory: address -> [mod_mem_type index, module id, module_load row]
        self._modmem: dict[int, list[int]] = {}
        self._init_free_rows: dict[int, int] = {}   # module id -> its module_init_free row
        self._do_init: dict[int, int] = {}          # pid -> module id whose do_init_module it runs
        self._after_init: dict[int, list[int]] = {}  # module id -> observations awaiting its init free
        self._splits: dict[str, int] = {}
        self._split_rows: list[int | None] = []     # op rows of the split flushes since the last reading
        #: op row -> (rows emitted before its kernel work was done, its task): the events after
        #: the row began while it was in progress (its ``concurrent`` span, finish()).  A
        #: module_load's or module_init's work ends with its last set_memory_* call, an init
        #: free's with its reset's purge.
        self._spans: dict[int, tuple[int, int]] = {}
        self._resetting: dict[int, int] = {}        # pid -> init free row awaiting its purge
        self._reset_fallback: set[int] = set()      # pids whose reset flushes the direct map alone
        self._dmap_unmap: set[int] = set()          # pids in a vm_reset_perms' _vm_unmap_aliases
        self._cpa_wait: dict[int, tuple[int, int | None]] = {}  # pid -> (cpu, init's module) at CPA
        self._init_rows: dict[int, int] = {}        # pid -> its module_init row (do_init_module's CPAs)
        self._anchors: dict[int, int] = {}          # pid -> op row placed at the purge it is in
        self._purge_started: dict[int, int] = {}    # pid -> ts of its purge's entry (6.4+ tracepoint)
        self._after: dict[int, int] = {}            # op row -> the row it goes after (finish())
        #: va queued lazily -> (its event's row, ts, pid, ts its free began)
        self._queued: dict[int, tuple[int, int, int, int]] = {}
        self._caught: dict[int, tuple[int, int]] = {}   # row of a lazy free -> (pid whose purge swept it, its pid)
        #: purges are seen at their entry (init.sh's kprobe): set by the parser from "GT enabled:",
        #: else by the first one
        self.purge_entries = False
        #: or only their start, beside the tracepoint that reports them (6.4+; purge_started)
        self.purge_starts = False
        progs = bpf_progs or []
        self._bpf_by_index = {p.index: p for p in progs if p.index is not None}
        sizes = Counter(p.bytes_jited for p in progs)
        self._bpf_default = sizes.most_common(1)[0][0] if sizes else None
        self._timed = sorted(((p.load_time_ns, 0, p) for p in progs if p.load_time_ns is not None),
                             key=lambda t: t[0])
        self._timed += sorted(((p.free_time_ns, 1, p) for p in progs if p.free_time_ns is not None),
                              key=lambda t: t[0])
        self._timed.sort(key=lambda t: (t[0], t[1]))
        self._timed_i = 0

    # ------------------------------------------------------------ helpers
    def _emit(self, ts: int, cpu: int, op: str, id_: int, size: int = 0, owner: str | None = None,
              sections: tuple[int, ...] = (0,) * _N_SECT, patch_sites: int = 0,
              pid: int | None = None) -> int:
        self.events.append([max(ts, self.last_ts), cpu, op, id_, size, owner, *sections, patch_sites])
        self.last_ts = max(ts, self.last_ts)
        row = len(self.events) - 1
        self._last[pid] = row
        if op == "vfree":
            self._last_vfree = row
        elif op not in ("vmalloc", "text_patch"):
            self._sticky[pid] = row
        return row

    def charge(self, pid: int | None, comm: str) -> int | None:
        """The event row the kernel's work done now by ``pid`` is charged to.

        Like the emulator, charge the event that triggered it: a purge right
        after the task's own ``vfree`` is that vfree's lazy purge (6.1
        ``free_vmap_area_noflush`` -> ``try_purge_vmap_area_lazy``), sync-core
        rounds right after a ``text_patch`` are its own; otherwise the
        workload op the task is serving (a load's ``set_memory_*``, an
        unload's ``vm_reset_perms``); a kernel thread serving none runs
        ``drain_vmap_area_work`` (6.18), charged to the latest ``vfree``.
        """
        last = self._last.get(pid)
        if last is not None and self.events[last][2] in ("vfree", "text_patch"):
            return last
        if pid in self._sticky:
            return self._sticky[pid]
        if comm.startswith(KTHREAD_PREFIXES) and self._last_vfree is not None:
            return self._last_vfree
        return len(self.events) - 1 if self.events else None

    def observe(self, ts: int, kind: str, value: int, row: int | None) -> None:
        """Record what the kernel did, charged to event ``row`` (None: to no op).

        Work before the first workload event (e.g. ``text_poke_bp`` arming
        the tracer's own kprobes) was not caused by the workload: counted as
        unused, not observed.  vmstat deltas may be charged to no op.
        """
        if row is None and kind not in SPLIT_KINDS:
            self.unused[f"{kind} before the first workload event"] += 1
            return
        self.obs.append((ts, kind, value, row))

    def observe_for(self, ts: int, kind: str, pid: int | None, comm: str) -> None:
        """Observe one round of work done by ``pid``, charged by :meth:`charge`.

        do_init_module's work after the ``module_load`` tracepoint (the
        after-init ``set_memory_ro``, whose purge flushes the module's freed
        copy) is charged to the module's ``module_init_free`` once that is
        seen: the emulator replays it there, after the copy's vfree.
        """
        row = self.charge(pid, comm)
        mid = self._do_init.get(pid)
        if mid is not None and row is not None and row == self._sticky.get(pid) \
                and self.events[row][2] == "module_load" and mid not in self._init_free_rows:
            self._after_init.setdefault(mid, []).append(len(self.obs))
        self.observe(ts, kind, 1, row)

    def counts(self, pid: int, comm: str) -> bool:
        """Whether an event of this task belongs to the workload (gt_bpf.py's rule)."""
        return (self.own_pid is None or pid == self.own_pid or pid == 0
                or comm.startswith(KTHREAD_PREFIXES))

    def advance(self, ts: int) -> None:
        """Emit recorded BPF loads/frees whose time has come (before an event at ``ts``)."""
        if self._pending_bpf and self._pending_bpf[4] and ts - self._pending_bpf[3] > BPF_PENDING_NS:
            self._flush_bpf(self._pending_bpf[3])
        while self._timed_i < len(self._timed) and self._timed[self._timed_i][0] <= ts:
            t, is_free, p = self._timed[self._timed_i]
            self._timed_i += 1
            if is_free:
                self._bpf_release(t, 0, p.id)
            else:
                self._flush_bpf(t)
                self._pending_bpf = (p.id, p.bytes_jited, p.name, t, True)

    def _flush_bpf(self, ts: int, cpu: int = 0, exec_size: int | None = None, pid: int | None = None) -> None:
        if self._pending_bpf is None:
            return
        id_, size, name, _, _ = self._pending_bpf
        self._pending_bpf = None
        if size is None:
            # No size given: a dedicated area (> one pack) holds the image,
            # so its page-rounded size is the best bound we have.
            if exec_size is not None and exec_size > BPF_PACK_AREA:
                size = exec_size - PAGE_SIZE
                self.unused["bpf_prog_load size taken from its exec area"] += 1
            else:
                size = 0
                self.unused["bpf_prog_load of unknown size (pass --bpf-progs)"] += 1
        self._bpf_rows[id_] = self._last_bpf_row = self._emit(ts, cpu, "bpf_prog_load", id_, size, name,
                                                              pid=pid)

    def _bpf_release(self, ts: int, cpu: int, id_: int, pid: int | None = None) -> None:
        """The workload dropped its last reference to program ``id_`` (its fd's close).

        The kernel frees it later: ``bpf_prog_put`` -> ``__bpf_prog_put_noref`` ->
        ``call_rcu(__bpf_prog_put_rcu)`` -> ``bpf_prog_free``, which queues
        ``bpf_prog_free_deferred`` on a workqueue; that kworker's ``bpf_jit_free`` frees the
        image (``bpf_prog_pack_free``, or 5.10 ``bpf_jit_binary_free`` -> ``module_memfree``)
        and ``__bpf_prog_free`` vfrees the ``struct bpf_prog`` (kernel/bpf/syscall.c,
        kernel/bpf/core.c, arch/x86/net/bpf_jit_comp.c).  A program whose areas are known (a
        marked load) is therefore freed where that work shows up (:meth:`_bpf_deferred_free`);
        others (recorded loads) here, at the release.
        """
        if id_ not in self._bpf_rows:
            self.unused["bpf_prog_free of a program loaded before tracing"] += 1
        elif self._n_prog_areas[id_]:
            self._released[id_] = None
        else:
            self._bpf_free(ts, cpu, id_, pid)

    def _bpf_deferred_free(self, ts: int, cpu: int, pid: int | None, id_: int | None) -> None:
        """``bpf_prog_free_deferred`` of released program ``id_`` began (None: of the oldest).

        None is an emptied pack's free, which names no program: work items run in release
        order, so it is the oldest released program's.  Simplification: one FIFO for all CPUs'
        kworkers (``schedule_work`` queues on the releasing CPU's pool); in every shared log the
        programs' areas are freed in the order of their closes (all 3303 programs on 6.1, 6.12
        and 7.2, 2048 on 5.10, 100 on 6.18).
        """
        if id_ is None:
            id_ = next(iter(self._released))
        del self._released[id_]
        self._bpf_free(ts, cpu, id_, pid)

    def _bpf_free(self, ts: int, cpu: int, id_: int, pid: int | None = None) -> None:
        del self._bpf_rows[id_]
        self._last_bpf_free_row = self._last_bpf_row = self._emit(ts, cpu, "bpf_prog_free", id_, pid=pid)

    # ------------------------------------------------------------ events
    def mark(self, ts: int, cpu: int, pid: int, text: str) -> None:
        """A trace_marker line; understands gt_bpf.py's and init.sh's GT protocol."""
        self.advance(ts)
        text = text.strip()
        self._loading = None
        if m := _GT_LOAD.match(text):
            if self.own_pid is None:
                self.own_pid = pid
            self._flush_bpf(ts, cpu, pid=pid)
            i = int(m.group(1))
            p = self._bpf_by_index.get(i)
            self._pending_bpf = (i, p.bytes_jited if p else self._bpf_default,
                                 p.name if p else None, ts, False)
            self._loading = (pid, i)
        elif m := _GT_CLOSE.match(text):
            self._flush_bpf(ts, cpu, pid=pid)
            self._bpf_release(ts, cpu, int(m.group(1)), pid)
        elif m := _GT_BPFL.match(text):
            self._flush_bpf(ts, cpu, pid=pid)
            self._pending_bpf = (self._case * CASE_ID_STRIDE + int(m.group(1)), self._case_size,
                                 None, ts, False)
            self._loading = (pid, self._pending_bpf[0])
        elif m := _GT_BPFF.match(text):
            self._flush_bpf(ts, cpu, pid=pid)
            self._bpf_release(ts, cpu, self._case * CASE_ID_STRIDE + int(m.group(1)), pid)
        elif m := _GT_CASE.match(text):
            self._flush_bpf(ts, cpu, pid=pid)
            self._case += 1
            self._case_size = self.case_sizes.get((int(m.group(1)), int(m.group(2))))
        elif m := _GT_DM.match(text):
            self._flush_bpf(ts, cpu, pid=pid)
            row = self._last_bpf_row
            self.vmstat(ts, "direct_map_level2_splits", int(m.group(1)), row=row)
            self.vmstat(ts, "direct_map_level3_splits", int(m.group(2)), row=row)
        elif text == "GT vmap-pools-drained":     # init.sh ran the vmap-node shrinker: pools empty
            self._pool_ranges.clear()
        elif text.startswith("GT vmstat "):
            for kind, v in _GT_VMSTAT.findall(text):
                self.vmstat(ts, kind, int(v), row=self._last_module_row)
        elif text.startswith("GT "):
            self._flush_bpf(ts, cpu, pid=pid)
        self._last[pid] = None

    def vmstat_start(self, kind: str, value: int) -> None:
        """The counter's value when tracing started."""
        self.observable.add(kind)
        self._splits.setdefault(kind, value)

    def vmstat(self, ts: int, kind: str, value: int, row: int | None = None) -> None:
        """A vmstat reading of a split/collapse counter: observe its delta, charged to ``row``, or,
        when the log showed exactly that many level-2 split flushes since the last reading
        (:meth:`split_flush`), each to the op that split."""
        before = self._splits.get(kind)
        self._splits[kind] = value
        self.observable.add(kind)
        split_rows = self._split_rows if kind == "direct_map_level2_splits" else []
        if kind == "direct_map_level2_splits":
            self._split_rows = []
        if before is not None and value != before:
            if value - before == len(split_rows):
                for r in split_rows:
                    self.observe(ts, kind, 1, r)
            else:
                self.observe(ts, kind, value - before, row)

    def split_flush(self, pid: int, comm: str) -> None:
        """``__split_large_page``'s own ``flush_tlb_all``: a direct-map split by the op ``pid`` serves."""
        self._split_rows.append(self.charge(pid, comm))

    def alloc(self, ts: int, cpu: int, pid: int, comm: str, va: int, size: int, vstart: int,
              align: int = PAGE_SIZE) -> None:
        """``alloc_vmap_area`` returned ``va``; ``size`` includes the guard page; a
        ``THREAD_ALIGN``-aligned vmalloc is a task's stack (owner ``thread_stack``)."""
        self.advance(ts)
        self._area_pages[va] = size // PAGE_SIZE
        if self._pool_ranges and vstart < EXEC_RANGE_START:
            self._pool_first_use(cpu, va, size, not self.setup and self.counts(pid, comm))
        if self.setup:
            return
        if vstart < EXEC_RANGE_START:
            if not self.counts(pid, comm):
                self.unused["vmalloc by another task"] += 1
                return
            self._next_vm += 1
            self._vm[va] = self._next_vm
            self._vm_spans.append((va, va + size))
            self._emit(ts, cpu, "vmalloc", self._next_vm, max(size - PAGE_SIZE, 0),
                       THREAD_STACK if align == THREAD_ALIGN else None, pid=pid)
            if self._loading is not None and self._loading[0] == pid:
                # bpf_prog_alloc's struct bpf_prog (and what else the load keeps): freed by
                # the program's deferred free (_bpf_release)
                self._prog_areas[va] = self._loading[1]
                self._n_prog_areas[self._loading[1]] += 1
            return
        if not self.counts(pid, comm):
            self.unused["exec-range alloc by another task"] += 1
            return
        self._exec_spans.append((va, va + size))
        if self._pending_bpf is not None:
            bpf_id = self._pending_bpf[0]
            self._flush_bpf(ts, cpu, exec_size=size, pid=pid)
            self._exec[va] = ("bpf", bpf_id)
        else:
            w = self._windows.setdefault(pid, _Window())
            self._next_exec += 1
            w.rows.append(self._emit(ts, cpu, "exec_alloc", self._next_exec, max(size - PAGE_SIZE, 0),
                                     pid=pid))
            w.areas.append((va, size))
            self._exec[va] = ("exec", self._next_exec)
        self.observe(ts, "exec_area_alloc", 1, self._sticky.get(pid))

    def _pool_first_use(self, cpu: int, va: int, size: int, traced: bool) -> None:
        """An area in VA the setup's purges swept, not used since: on 6.9+ it came from the vmap
        node pool of its CPU (``node_alloc``), where that purge had put it (``purge_vmap_node``).
        Its traced first use says so for the replay (:meth:`vmap_pools`); without the log of
        the frees before tracing that is all there is to know of the pools' starting content."""
        end = va + size
        if not any(s <= va and end <= e for s, e in self._pool_ranges):
            return
        if traced and size <= MAX_VA_SIZE_PAGES * PAGE_SIZE and not any(
                s < end and va < e for s, e in self._pool_used):
            self._pool_start.append((va, size // PAGE_SIZE, cpu))
        self._pool_used.append((va, end))

    def free_node(self, va: int, node: int | None) -> None:
        """kprobe ``free_vmap_area_noflush`` with the area's ``flags`` (6.9+, before its free
        event): the vmap node it was allocated for (``decode_vn_id``), whose pool its purge
        fills.  Replaces the allocating CPU for areas allocated before tracing."""
        if node is not None:
            self._node[va] = node

    def alloc_entry(self, pid: int, size: int, vstart: int, align: int = PAGE_SIZE) -> None:
        """kprobe ``alloc_vmap_area`` entry (the kretprobe gives the address)."""
        self._pending_alloc[pid] = (size, vstart, align)

    def alloc_return(self, ts: int, cpu: int, pid: int, comm: str, va: int) -> bool:
        """kretprobe ``alloc_vmap_area``; False if no entry was seen for this task."""
        entry = self._pending_alloc.pop(pid, None)
        if entry is None:
            return False
        self.alloc(ts, cpu, pid, comm, va, *entry)
        return True

    def free(self, ts: int, cpu: int, pid: int, comm: str, va: int, nr_lazy: int | None = None,
             va_end: int | None = None, began: int | None = None) -> None:
        """``free_vmap_area_noflush`` (:meth:`_free`); with purges seen at their entry, the event
        it became is remembered until a purge sweeps the area (:meth:`_sweep`).  ``began``: the
        function's entry (kprobe), where the tracepoint at its end gives ``ts``."""
        n = len(self.events)
        self._free(ts, cpu, pid, comm, va, nr_lazy, va_end)
        if (self.purge_entries or self.purge_starts) and len(self.events) > n:
            self._queued[va] = (len(self.events) - 1, ts, pid, ts if began is None else began)

    def _sweep(self, pid: int, ts: int, start: int, end: int, purged: int | None = None) -> list[int]:
        """A purge flushed ``[start, end)`` from its snapshot at ``ts``: every area queued before it
        lies in that range.  Which task's purge swept each event's area (``_caught``) tells whether
        the event really landed inside an op (finish()): an area freed microseconds before another
        CPU's purge may still miss it, or one freed just after the purge began be in it.  An area
        whose free began before ``ts`` but was reported after it (the 6.4+ tracepoint fires once
        the area is queued) is in it if the purge's ``num_purged`` needs it.  Returns the rows of
        the events whose areas it swept."""
        sure, maybe = [], []
        for va, (_, t, _, began) in self._queued.items():
            if start <= va < end and began <= ts:
                (sure if t <= ts else maybe).append(va)
        swept = []
        for va in sure + sorted(maybe)[:max(0, (purged or 0) - len(sure))]:
            row, _, freer, _ = self._queued.pop(va)
            self._caught[row] = (pid, freer)
            swept.append(row)
        return swept

    def _free(self, ts: int, cpu: int, pid: int, comm: str, va: int, nr_lazy: int | None = None,
              va_end: int | None = None) -> None:
        """``free_vmap_area_noflush``: the area is queued for lazy purge.

        ``nr_lazy`` (6.18 tracepoint: ``vmap_lazy_nr`` after adding this area) at the first free
        tells how many lazily freed pages were already queued when tracing began.  A
        vmalloc-range area allocated before tracing whose size is known (``va_end`` of the
        kprobe, or its allocation during the tracer's setup) becomes a ``vmalloc`` + ``vfree``
        here: its pages join the lazy list now, which decides when the next purge flushes.
        """
        self.advance(ts)
        pages = self._area_pages.pop(va, None)
        if pages is None and va_end is not None:
            pages = (va_end - va) // PAGE_SIZE
        node = self._node.pop(va, None)
        if self.setup:
            self._setup_lazy += pages or 0
            if pages:
                self._setup_lazy_areas[va] = pages
                if node is not None:
                    self._setup_node[va] = node     # for its warmup vmalloc
            return
        if self._lazy_known is not None and pages:
            self._lazy_known.append((va, va + pages * PAGE_SIZE))
        if nr_lazy is not None and self.lazy_start is None:
            if pages is None or self._purged_before_first_free:
                self.lazy_start = -1
                self.unused["lazily freed pages at start unknown"] += 1
            else:
                self.lazy_start = max(nr_lazy - pages, 0)
        if (prog := self._prog_areas.pop(va, None)) is not None:
            self._n_prog_areas[prog] -= 1
            if prog in self._released:
                self._bpf_deferred_free(ts, cpu, pid, prog)   # __bpf_prog_free's vfree
        if (vm_id := self._vm.pop(va, None)) is not None:
            self._emit(ts, cpu, "vfree", vm_id, pid=pid)
            return
        owner = self._exec.pop(va, None)
        if owner is None:
            if va < EXEC_RANGE_START and pages and self.counts(pid, comm):
                self._next_vm += 1
                self._pre_areas.append((va, pages, self._next_vm))
                # on the CPU of its vmap node, where the kernel's purge pools it
                self._emit(ts, cpu if node is None else node, "vmalloc", self._next_vm, (pages - 1) * PAGE_SIZE,
                           pid=pid)
                self._emit(ts, cpu, "vfree", self._next_vm, pid=pid)
                self.unused["vfree of an area allocated before tracing (replayed with its vmalloc)"] += 1
            else:
                self.unused["free of an area allocated before tracing"] += 1
            return
        kind, id_ = owner
        if kind == "bpf":
            # bpf_jit_free in bpf_prog_free_deferred: 5.10 frees the program's own image, 6.x
            # bpf_prog_pack_free an emptied pack; its vm_reset_perms purge is the free's.
            if self._released:
                self._bpf_deferred_free(ts, cpu, pid, id_ if id_ in self._released else None)
            self._sticky[pid] = self._last_bpf_free_row
            self._last[pid] = None
        elif kind == "module_core":
            self._sticky[pid] = self._module_unload_rows.get(id_, self._last_module_row)
            self._last[pid] = None
        elif kind == "module_init":
            self._init_free(ts, cpu, pid, id_)
        else:
            self._emit(ts, cpu, "exec_free", id_, pid=pid)

    def _init_free(self, ts: int, cpu: int, pid: int, mid: int) -> None:
        """``do_free_init`` freeing module ``mid``'s init memory: one ``module_init_free`` event
        for all its init areas (6.4+ frees up to three, one after another, in the same work)."""
        row = self._init_free_rows.get(mid)
        if row is None:
            row = self._init_free_rows[mid] = self._emit(ts, cpu, "module_init_free", mid, pid=pid)
            self._resetting[pid] = row
            for i in self._after_init.pop(mid, ()):
                self.obs[i] = (*self.obs[i][:3], row)
        else:
            self._sticky[pid] = row
            self._last[pid] = None
            self._resetting[pid] = row      # the span runs to this area's reset purge too

    def execmem_alloc_entry(self, ts: int, cpu: int, pid: int, type_: int, size: int) -> bool:
        """kprobe ``execmem_alloc(type, size)`` (6.4+ ``module_memory_alloc``; the kretprobe gives the address).

        The first module allocation opens the loading task's window: on 7.2
        module text comes from the ROX cache without a vmap area of its own.
        Returns whether the call was a module's (others are not used).
        """
        if type_ not in (EXECMEM_MODULE_TEXT, EXECMEM_MODULE_DATA):
            return False
        self._pending_execmem[pid] = (type_, size)
        w = self._windows.setdefault(pid, _Window())
        if not w.rows:
            self._next_exec += 1
            w.rows.append(self._emit(ts, cpu, "exec_alloc", self._next_exec, size, pid=pid))
        return True

    def execmem_alloc_return(self, pid: int, addr: int) -> bool:
        entry = self._pending_execmem.pop(pid, None)
        if entry is None or not addr:
            return False
        self._windows.setdefault(pid, _Window()).execmem.append((entry[0], addr, entry[1]))
        if entry[0] == EXECMEM_MODULE_TEXT:
            self._texts.append((addr, addr + entry[1]))
        return True

    def execmem_free(self, ts: int, cpu: int, pid: int, comm: str, addr: int) -> bool:
        """kprobe ``execmem_free(addr)``: 6.4+ ``free_mod_mem``/``do_free_init``.  Init text from the
        7.2 ROX cache has no vmap area of its own, so this, not ``free_vmap_area_noflush``, is
        where its module's init memory is freed.  Returns whether ``addr`` was a module's."""
        self.advance(ts)
        info = self._modmem.pop(addr, None)
        if info is None or not self.counts(pid, comm):
            return False
        if info[0] >= MOD_INIT_TEXT:
            self._init_free(ts, cpu, pid, info[1])
        return True

    def purge(self, ts: int, pid: int, comm: str, flushed: bool, start: int = 0, end: int = 0,
              purged: int | None = None) -> None:
        """``__purge_vmap_area_lazy`` finished; ``flushed`` = it sent a flush over ``[start, end)``
        (``purged`` areas, where the tracepoint says)."""
        self.advance(ts)
        self._reset_purged(pid)
        if self.setup:
            if flushed:
                self._setup_lazy = 0
                self._setup_lazy_areas.clear()
                if VMALLOC_START <= start < end <= EXEC_RANGE_START:
                    self._pool_ranges.append((start, end))
            return
        self.observable.add("vmap_purge")
        if self.lazy_start is None:
            self._purged_before_first_free = True
        if not self.counts(pid, comm):
            self.unused["purge by another task"] += 1
        elif flushed:
            self.observe_for(ts, "vmap_purge", pid, comm)
        if flushed and not self.purge_entries and start < end:
            self._first_purge_edges(start, end)
        started = self._purge_started.pop(pid, None)
        if flushed and started is not None:
            self._swept_by(pid, started, start, end, purged)
        if pid in self._dmap_unmap:         # vm_reset_perms' purge: found nothing, it flushes alone
            self._dmap_unmap.discard(pid)
            self.observable.add("vm_reset_flush_all")
            if not flushed:
                self._reset_fallback.add(pid)

    def unmap_aliases(self, pid: int, flush_dmap: int) -> None:
        """kprobe ``_vm_unmap_aliases(start, end, flush_dmap)``: with ``flush_dmap`` (``vm_reset_perms``)
        a purge that finds nothing queued is followed by a flush of the direct-map range alone."""
        if flush_dmap:
            self._dmap_unmap.add(pid)
        else:
            self._dmap_unmap.discard(pid)

    def purge_started(self, pid: int, ts: int) -> None:
        """The ``__purge_vmap_area_lazy`` kprobe of a kernel whose tracepoint reports the purge
        (6.4+): when its snapshot of the lazy list was taken."""
        self._purge_started[pid] = ts

    def purge_entry(self, ts: int, pid: int, comm: str, start: int, end: int) -> None:
        """kprobe ``__purge_vmap_area_lazy(start, end)`` entry: it flushed iff a
        ``flush_tlb_kernel_range`` follows that is not ``_vm_unmap_aliases``' fallback."""
        self._end_purge(pid, comm)
        self.purge_entries = True
        self._cpa_purged(ts, pid)
        self._reset_purged(pid)
        self._pending_purge[pid] = (ts, start, end)

    def _reset_purged(self, pid: int) -> None:
        """The task's purge began: if it is an init free's ``vm_reset_perms``, what was freed
        lazily until now is in it (the init free's concurrent span ends here)."""
        row = self._resetting.pop(pid, None)
        if row is not None:
            self._spans[row] = (len(self.events), pid)

    def kernel_range_flush_entry(self, ts: int, pid: int, comm: str, start: int, end: int) -> None:
        """kprobe ``flush_tlb_kernel_range``: settles the task's open purge.

        6.1 ``_vm_unmap_aliases(start, end, flush)``: ``if (!__purge_vmap_area_lazy(start, end)
        && flush) flush_tlb_kernel_range(start, end)`` - the same range as the purge was given
        means nothing was purged (a purge widens it to the purged areas, which never lie in the
        direct map the reset path passes).
        """
        pending = self._pending_purge.pop(pid, None)
        if pending is not None:
            t, p_start, p_end = pending
            fallback = p_start != ULONG_MAX and (start, end) == (p_start, p_end)
            self.purge(t, pid, comm, not fallback)
            if not fallback:
                self._first_purge_edges(start, end)
                self._swept_by(pid, ts, start, end)
            else:
                self._anchors.pop(pid, None)
            self.observable.add("vm_reset_flush_all")
            if fallback:
                self._reset_fallback.add(pid)

    def _first_purge_edges(self, start: int, end: int) -> None:
        """The workload's first purge flushed ``[start, end)``, the span of every area then queued:
        with no ``nr_lazy`` to count them (6.1's kprobes), a vmalloc-range edge beyond the areas
        known to be queued (freed in the trace or in the tracer's setup) is an area freed before
        tracing, unseen.  Each such edge becomes a one-page area queued at the start
        (:meth:`_warmup_rows`), so that the replay's first purge spans as far."""
        known, self._lazy_known = self._lazy_known, None
        if known is None or self.lazy_start is not None:
            return
        known += [(va, va + n * PAGE_SIZE) for va, n in self._setup_lazy_areas.items()]
        if VMALLOC_START <= start < EXEC_RANGE_START and start < min((s for s, _ in known), default=end):
            self._setup_lazy_areas[start] = 2
        if VMALLOC_START < end <= EXEC_RANGE_START and end > max((e for _, e in known), default=start):
            self._setup_lazy_areas[end - 2 * PAGE_SIZE] = 2

    def _swept_by(self, pid: int, ts: int, start: int, end: int, purged: int | None = None) -> None:
        """The task's purge took ``[start, end)`` at ``ts`` (:meth:`_sweep`).  Frees the op's
        first purge swept though they came after the op's row: the op takes its place after
        them (finish()), so that its replay sweeps them too."""
        anchor = self._anchors.pop(pid, None)
        late = [r for r in self._sweep(pid, ts, start, end, purged) if anchor is not None and r > anchor]
        if late:
            self._after[anchor] = last = max(late)
            self.events[anchor][0] = self.events[last][0]

    def _end_purge(self, pid: int, comm: str) -> None:
        pending = self._pending_purge.pop(pid, None)
        if pending is not None:
            self._anchors.pop(pid, None)
            self.purge(pending[0], pid, comm, False)

    def csd_queue(self, ts: int, src_cpu: int, pid: int, comm: str, target: int, func: str) -> None:
        """``csd:csd_queue_cpu``: one per remote CPU; consecutive ones = one round."""
        self.advance(ts)
        func_round = self._round.get(src_cpu)
        if func_round and func_round[0] == func and target not in func_round[1]:
            func_round[1].add(target)
            return
        self._round[src_cpu] = (func, {target})
        self.on_each_cpu(ts, pid, comm, func)

    def other_event(self, cpu: int) -> None:
        """Any other event on ``cpu`` closes its open CSD round."""
        self._round.pop(cpu, None)

    def on_each_cpu(self, ts: int, pid: int, comm: str, func: str) -> None:
        """One cross-CPU call round (``on_each_cpu_cond_mask``) running ``func``."""
        kind = FLUSH_KINDS.get(func)
        self.observable.update(FLUSH_KINDS.values())
        if kind == "sync_core" and (poke := self._pending_poke.pop(pid, None)) is not None:
            self._emit(poke[0], poke[1], "text_patch", 0, patch_sites=1, pid=pid)
        if pid in self._reset_fallback and kind in ("flush_tlb_all", "flush_tlb_kernel_range"):
            self._reset_fallback.discard(pid)
            if kind == "flush_tlb_all" and self.counts(pid, comm):
                self.observe_for(ts, "vm_reset_flush_all", pid, comm)
        if kind is None:
            self.unused[f"cross-CPU call {func}"] += 1
        elif not self.counts(pid, comm):
            self.unused[f"{kind} by another task"] += 1
        else:
            self.observe_for(ts, kind, pid, comm)

    def set_memory(self, ts: int, cpu: int, pid: int, which: str, addr: int, npages: int) -> None:
        """kprobe ``set_memory_{ro,nx,x,rw,rox}``: kept to decode module section sizes.

        The first call of a window (``complete_formation``; on 7.2 already
        ``execmem_alloc_rw``) is the first purge of the load: a module's
        ``module_load`` event goes there (:meth:`module_load`), after what
        other tasks freed while the loader was still relocating; precisely,
        at the call's purge when the log shows purges at their entry
        (:meth:`_cpa_purged`).
        """
        self._end_purge(pid, "")
        self._cpa_purged(ts, pid)
        w = self._windows.get(pid)
        if w is None and (mid := self._do_init.pop(pid, None)) is not None:
            # the loader's first CPA after the module:module_load tracepoint is do_init_module's
            # after-init set_memory_ro: the module's init has returned
            self._cpa_wait[pid] = (cpu, mid)
        if w is not None or pid in self._init_rows:
            self._cpa_wait[pid] = (cpu, None)
        if w is not None:
            w.setmem.append((which, addr, npages))
        elif which == "set_ro" and (info := self._modmem.get(addr)) and info[0] == MOD_INIT_DATA:
            # do_init_module's module_enable_rodata_ro_after_init: this writable area, which the
            # load could not tell from init data, is MOD_RO_AFTER_INIT
            t, mid, row = info
            i0, i1 = 6 + MOD_INIT_DATA, 6 + MOD_RO_AFTER_INIT
            size = min(self.events[row][i0], npages * PAGE_SIZE)
            self.events[row][i0] -= size
            self.events[row][i1] += size
            info[0] = MOD_RO_AFTER_INIT
            if addr in self._exec:
                self._exec[addr] = ("module_core", mid)
        self._last[pid] = None
        if not self.purge_entries:
            self._cpa_purged(ts, pid)

    def _cpa_purged(self, ts: int, pid: int) -> None:
        """The task's ``set_memory_*`` call reached its ``vm_unmap_aliases`` purge (kprobe entry):
        what other tasks freed until now is in it, so a load's or an init's event goes here."""
        wait = self._cpa_wait.pop(pid, None)
        if wait is None:
            return
        cpu, mid = wait
        if mid is not None:
            self._init_rows[pid] = self._anchors[pid] = self._emit(ts, cpu, "module_init", mid, pid=pid)
        elif (w := self._windows.get(pid)) is not None:
            if w.cpa_row is None and w.rows:
                w.cpa_row = self._anchors[pid] = self._emit(ts, cpu, None, 0, pid=pid)
                self._merged[w.cpa_row] = w.rows[0]      # unless a module_load claims it
            w.cpa_end = len(self.events)
        elif (row := self._init_rows.get(pid)) is not None:     # do_init_module's next CPA
            self._spans[row] = (len(self.events), pid)

    def text_poke(self, ts: int, cpu: int, pid: int, comm: str, nr: int | None) -> None:
        """``text_poke_bp_batch(tp, nr)``: one batch of ``nr`` patch sites.

        ``nr=None``: the 7.2 probe on ``smp_text_poke_batch_finish``, which
        also fires with nothing queued (``smp_text_poke_batch_flush`` only
        processes a non-empty ``text_poke_array``; 40 such calls in the 7.2
        module run, one per load).  Such a batch is kept pending and becomes a
        one-site ``text_patch`` only when its first ``do_sync_core`` round
        follows (:meth:`on_each_cpu`).
        """
        self.advance(ts)
        if not self.counts(pid, comm):
            return
        if self._pending_poke.pop(pid, None) is not None:
            self.unused["empty text_poke batch (nothing queued)"] += 1
        if nr is None:
            self._pending_poke[pid] = (ts, cpu)
        else:
            self._emit(ts, cpu, "text_patch", 0, patch_sites=nr, pid=pid)

    def module_load(self, ts: int, cpu: int, pid: int, name: str) -> None:
        """``module:module_load`` (end of load_module, before do_init_module)."""
        self.advance(ts)
        self._cpa_purged(ts, pid)
        self._init_rows.pop(pid, None)
        self._next_module += 1
        mid = self._next_module
        self._modules[name] = mid
        w = self._windows.pop(pid, None)
        if w is None or not w.rows:
            row = self._emit(ts, cpu, "module_load", mid, 0, name, pid=pid)
            self.unused["module_load without traced allocations"] += 1
        else:
            # The event goes where load_module's first set_memory_* call purged (else at its
            # first allocation), so that the vfree of the module's copy (load_module's
            # free_copy, after complete_formation) follows it as in the kernel.  The work done
            # since the first allocation is charged to it; what do_init_module does after this
            # tracepoint (the after-init set_memory_ro) to the module's init free (observe_for).
            if w.execmem:
                types = _mod_mem_types(w)
                sections = [0] * _N_SECT
                for t, (_, _, size) in zip(types, w.execmem):
                    sections[t] += size
                by_addr = {addr: t for t, (_, addr, _) in zip(types, w.execmem)}
                kinds = ["module_init" if by_addr.get(va, MOD_TEXT) >= MOD_INIT_TEXT else "module_core"
                         for va, _ in w.areas]
            else:
                sections, kinds = _module_sections(w)
            row = w.rows[0] if w.cpa_row is None else w.cpa_row
            self._merged.pop(row, None)
            self.events[row][2:] = ["module_load", mid, sum(sections), name, *sections, 0]
            for r in w.rows:
                if r != row:
                    self.events[r][2] = None            # merged into the module_load
                    self._merged[r] = row
            self._sticky[pid] = row
            self._do_init[pid] = mid
            if w.cpa_row is not None:
                self._spans[row] = (w.cpa_end, pid)
            for (va, _), kind in zip(w.areas, kinds):
                self._exec[va] = (kind, mid)
            if w.execmem:
                for t, (_, addr, _) in zip(types, w.execmem):
                    self._modmem[addr] = [t, mid, row]
        self._last_module_row = row

    def module_free(self, ts: int, cpu: int, pid: int, name: str) -> None:
        """``module:module_free`` (start of free_module)."""
        self.advance(ts)
        mid = self._modules.pop(name, None)
        if mid is None:
            self.unused["module_free of a module loaded before tracing"] += 1
            return
        self._last_module_row = self._emit(ts, cpu, "module_unload", mid, owner=name, pid=pid)
        self._module_unload_rows[mid] = self._last_module_row
        # its first purge (vm_reset_perms of the first section freed) may sweep what other
        # CPUs freed since: the unload then goes after those frees (_swept_by)
        self._anchors[pid] = self._last_module_row

    # ------------------------------------------------------------ output
    def finish(self) -> tuple[pa.Table, pa.Table]:
        """Close open windows and return (trace table, observations table)."""
        self.advance(1 << 63)
        self._flush_bpf(self.last_ts)
        if self._released:
            self.unused["bpf_prog_free after the trace ended (placed at its end)"] += len(self._released)
            while self._released:
                self._bpf_deferred_free(self.last_ts, 0, None, None)
        self.unused["empty text_poke batch (nothing queued)"] += len(self._pending_poke)
        self._pending_poke.clear()
        for pid in list(self._pending_purge):
            self._end_purge(pid, "")
        for pid in list(self._cpa_wait):
            self._cpa_purged(self.last_ts, pid)
        keep = sorted((i for i, e in enumerate(self.events) if e[2] is not None),
                      key=lambda i: (self._after[i], 1) if i in self._after else (i, 0))
        new_row = {old: new for new, old in enumerate(keep)}
        remap = {old: new_row[self._merged.get(old, old)] for old in range(len(self.events))}
        pre = [r + [0] for r in self._warmup_rows()]
        remap = {old: new + len(pre) for old, new in remap.items()}
        rows = pre + [self.events[i] + [0] for i in keep]
        span_end = -1
        lazy_frees = {q[0] for q in self._queued.values()} | set(self._caught)

        def landed(r: int, op_row: int, pid: int) -> bool:
            """Lazy free ``r`` landed inside the op: the op's purge swept it, or, on the op's CPU
            (the op preempted), the free's own."""
            sweeper, freer = self._caught.get(r, (None, None))
            return sweeper == pid or (sweeper == freer and self.events[r][1] == self.events[op_row][1])

        for op_row, (end, pid) in sorted(self._spans.items(), key=lambda kv: new_row[kv[0]]):
            # a lazy free that missed the op's purges ran after them: the span ends before it
            first = self._after.get(op_row, op_row) + 1
            end = next((r for r in range(first, end) if r in lazy_frees and not landed(r, op_row, pid)), end)
            if new_row[op_row] > span_end:                  # spans do not nest
                m = sum(1 for _ in takewhile(lambda r: r < end, islice(keep, new_row[op_row] + 1, None)))
                rows[remap[op_row]][-1] = m
                span_end = new_row[op_row] + m
        cols = list(zip(*rows)) if rows else [()] * (6 + _N_SECT + 2)
        names = ["ts_ns", "cpu", "op", "id", "size", "owner", *SECTION_COLUMNS, "patch_sites", "concurrent"]
        arrays = {"seq": pa.array(range(len(rows)), pa.uint64())}
        for name, col in zip(names, cols):
            arrays[name] = pa.array(list(col), SCHEMA.field(name).type)
        trace = pa.table([arrays[f.name] for f in SCHEMA], schema=SCHEMA)
        ops = [r[2] for r in rows]
        obs_rows = [remap.get(r) if r is not None else None for _, _, _, r in self.obs]
        observed = pa.table({
            "ts_ns": pa.array([o[0] for o in self.obs], pa.uint64()),
            "kind": pa.array([o[1] for o in self.obs], pa.string()),
            "value": pa.array([o[2] for o in self.obs], pa.int64()),
            "op": pa.array([ops[r] if r is not None else None for r in obs_rows], pa.string()),
            "event_row": pa.array(obs_rows, pa.int64()),
        }, schema=OBSERVED_SCHEMA)
        return trace, observed

    def vmalloc_busy(self) -> str:
        """The vmalloc range's VA in use when tracing began, for ``Machine.vmalloc_busy``.

        Every gap below the highest traced area that no vmalloc event's area
        ever covered (areas of the boot, of tasks not counted, or holes no
        request fitted), as ``OFFSET+PAGES``; and each area allocated before
        tracing and freed during it, as ``OFFSET+PAGES@ID`` with the id of
        the vmalloc that stands for it in the trace, so the emulator frees
        it where it lies.  Pages from the range's base: the lowest address
        rounded down to the 1 GiB KASLR granule of ``vmalloc_base``.
        """
        if not self._vm_spans and not self._pre_areas:
            return ""
        pre = sorted((va, va + pages * PAGE_SIZE, id_) for va, pages, id_ in self._pre_areas)
        base = self._vm_base()
        gaps = _gaps(self._vm_spans, base)
        for s, e, _ in pre:             # an area of the start is not a gap: cut it out of them
            gaps = [piece for gs, ge in gaps
                    for piece in ((gs, min(ge, s)), (max(gs, e), ge)) if piece[1] > piece[0]]
        blocks = sorted([(s, e, "") for s, e in gaps] + [(s, e, f"@{id_}") for s, e, id_ in pre])
        return ",".join(f"{(s - base) // PAGE_SIZE}+{(e - s) // PAGE_SIZE}{tag}" for s, e, tag in blocks)

    def _vm_base(self) -> int:
        """``vmalloc_base``: the lowest traced vmalloc-range address rounded down to its 1 GiB
        KASLR granule."""
        return min([s for s, _ in self._vm_spans] + [va for va, _, _ in self._pre_areas]) & ~((1 << 30) - 1)

    def vmap_pools(self) -> str:
        """The 6.9+ vmap node pools' areas when tracing began, for ``Machine.vmap_pools``: each
        as ``OFFSET+PAGES/CPU`` (pages from the base of :meth:`vmalloc_busy`, guard included;
        the CPU whose node's pool held it).  Only those the trace took again are known.

        A purge adds its areas in address order at the pool's head and an
        allocation takes the head (``purge_vmap_node``, ``node_pool_del_va``),
        so a pool from the setup gives its areas highest first: a first use
        above the one before it in the same pool came from the free tree
        (a hole, or an area the pool's decay gave back), not from the pool.
        """
        if not self._pool_start:
            return ""
        base, last, out = self._vm_base(), {}, []
        for va, pages, cpu in self._pool_start:
            if va < last.get((cpu, pages), 1 << 64):
                last[(cpu, pages)] = va
                out.append(f"{(va - base) // PAGE_SIZE}+{pages}/{cpu}")
        return ",".join(out)

    def module_busy(self) -> str:
        """The module range's VA in use when tracing began, for ``Machine.module_busy``.

        Every gap below the highest traced exec-range area that no traced area
        ever covered (the load-offset hole, boot-time modules and packs, the
        tracer's own kprobe pages), as ``OFFSET+PAGES`` from ``MODULES_VADDR``
        (KASLR layout; empty for a kernel whose module range starts lower).
        Simplification: an area allocated before tracing and freed during it
        stays busy for the whole replay.
        """
        if not self._exec_spans or min(s for s, _ in self._exec_spans) < MODULES_VADDR:
            return ""
        gaps = _gaps(self._exec_spans, MODULES_VADDR)
        return ",".join(f"{(s - MODULES_VADDR) // PAGE_SIZE}+{(e - s) // PAGE_SIZE}" for s, e in gaps)

    def execmem_cache(self) -> str:
        """The execmem ROX cache's chunks when tracing began, for ``Machine.execmem_cache``.

        Text carved from the cache (7.2) has no vmap area of its own, so a
        text in no traced area lies in a chunk populated before tracing: 2
        MiB, aligned (``execmem_cache_populate``).  Pages of such a chunk
        below its highest traced text that no traced text covered were busy
        (text of the boot); the rest was free.  As ``OFFSET+512:BUSY+PAGES...``
        in pages, the chunk from ``MODULES_VADDR``, its busy ranges from the
        chunk.  Simplification: text allocated before tracing and freed
        during it stays busy.
        """
        chunks: dict[int, list[tuple[int, int]]] = {}
        for start, end in self._texts:
            if not any(s <= start and end <= e for s, e in self._exec_spans):
                chunks.setdefault(start & -PMD_SIZE, []).append((start, end))
        return ",".join(f"{(base - MODULES_VADDR) // PAGE_SIZE}+{PMD_SIZE // PAGE_SIZE}"
                        + "".join(f":{(s - base) // PAGE_SIZE}+{(e - s) // PAGE_SIZE}" for s, e in _gaps(texts, base))
                        for base, texts in sorted(chunks.items()))

    def add_warmup(self, prog: BpfProg) -> None:
        """One more program alive at the start (before ``finish``)."""
        self._warmup.append(prog)

    def _warmup_rows(self) -> list[list]:
        """Starting-state events, placed before the workload: programs alive at the start, then
        the areas already queued for the lazy purge, freed again.

        Those queued during the tracer's setup (init.sh logs) are known by address: each
        vmalloc-range one is replayed where it lay (its block in :meth:`vmalloc_busy`, so the VA
        stays taken until the first purge, as in the kernel); the rest of the pages the first
        ``free_vmap_area_noflush`` tracepoint counts (``nr_lazy``, no addresses), or of the
        setup's, as one area of that many pages.
        """
        ts = self.events[0][0] if self.events else 0
        zero = [0] * _N_SECT
        rows = [[ts, 0, "bpf_prog_load", WARMUP_ID_BASE + (p.id or 0), p.bytes_jited, p.name, *zero, 0]
                for p in self._warmup]
        if self.lazy_start is None:
            self.lazy_start = self._setup_lazy
        for i, (va, pages) in enumerate(sorted(self._setup_lazy_areas.items())):
            if va < EXEC_RANGE_START and pages > 1:
                id_ = WARMUP_ID_BASE - 2 - i
                self._pre_areas.append((va, pages, id_))
                node = self._setup_node.get(va, 0)
                rows += [[ts, node, "vmalloc", id_, (pages - 1) * PAGE_SIZE, None, *zero, 0],
                         [ts, node, "vfree", id_, 0, None, *zero, 0]]
                if self.lazy_start > 0:
                    self.lazy_start = max(self.lazy_start - pages, 0)
        if self.lazy_start and self.lazy_start > 1:
            size = (self.lazy_start - 1) * PAGE_SIZE            # the emulator adds the guard page
            rows += [[ts, 0, "vmalloc", WARMUP_ID_BASE - 1, size, None, *zero, 0],
                     [ts, 0, "vfree", WARMUP_ID_BASE - 1, 0, None, *zero, 0]]
        self.n_warmup = len(rows)
        return rows

    def totals(self, observed: pa.Table) -> dict[str, int]:
        """Observation totals by kind (for the trace metadata)."""
        out: Counter = Counter()
        for k, v in zip(observed.column("kind").to_pylist(), observed.column("value").to_pylist()):
            out[k] += v
        return dict(sorted(out.items()))


def _gaps(spans: list[tuple[int, int]], base: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` stretches from ``base`` up to the highest span that no span covers."""
    gaps, pos = [], base
    for start, end in sorted(spans):
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    return gaps


def _mod_mem_types(w: _Window) -> list[int]:
    """The ``mod_mem_type`` of each 6.4+ module allocation of a window.

    ``move_module`` calls ``execmem_alloc`` once per non-empty type in enum
    order (``for_each_mod_mem_type``): text types get ``EXECMEM_MODULE_TEXT``
    (MOD_TEXT, then MOD_INIT_TEXT), the others ``EXECMEM_MODULE_DATA``.
    MOD_DATA always exists (it holds ``struct module``), so it is the first
    data area; ``complete_formation``'s ``module_enable_rodata_ro`` calls
    ``set_memory_ro`` on MOD_RODATA and MOD_INIT_RODATA before the
    ``module_load`` tracepoint.  Another writable data area is
    MOD_RO_AFTER_INIT if MOD_INIT_TEXT follows it, else MOD_INIT_DATA until
    ``do_init_module`` makes it read-only (see
    :meth:`KernelEventConverter.set_memory`).
    """
    ro = {a for k, a, _ in w.setmem if k == "set_ro"}
    etypes = [e[0] for e in w.execmem]
    out, texts = [], 0
    for i, (etype, addr, _) in enumerate(w.execmem):
        if etype == EXECMEM_MODULE_TEXT:
            out.append(MOD_TEXT if texts == 0 else MOD_INIT_TEXT)
            texts += 1
        elif MOD_DATA not in out:
            out.append(MOD_DATA)
        elif addr in ro:
            out.append(MOD_INIT_RODATA if texts > 1 or MOD_RODATA in out else MOD_RODATA)
        elif texts == 1 and EXECMEM_MODULE_TEXT in etypes[i + 1:]:
            out.append(MOD_RO_AFTER_INIT)
        else:
            out.append(MOD_INIT_DATA)
    return out


def _module_sections(w: _Window) -> tuple[tuple[int, ...], list[str]]:
    """Section sizes (bytes, SECTION_COLUMNS order) of a module from its window.

    Two areas = the pre-6.4 layout: ``module_alloc`` for core then init
    (kernel/module/main.c move_module).  In 6.1 ``module_enable_x`` runs
    ``set_memory_x`` on each layout's text, ``module_enable_ro`` runs
    ``set_memory_ro`` on text then rodata, and ``module_enable_nx`` runs
    ``set_memory_nx`` on rodata, ro_after_init, then writable data; the page
    counts of these calls give the (page-aligned) section sizes.
    Simplification: any other number of areas (6.4+ ``mod_mem_type`` areas,
    or no set_memory probes) is recorded as text = first area, data = rest.
    """
    if len(w.areas) == 2 and w.setmem:
        (core, core_sz), (init, init_sz) = w.areas
        core_sz -= PAGE_SIZE
        init_sz -= PAGE_SIZE

        def calls(which: str, base: int, size: int) -> list[tuple[int, int]]:
            return [(a - base, n * PAGE_SIZE) for k, a, n in w.setmem
                    if k == which and base <= a <= base + size]

        def layout(base: int, size: int, with_ro_after_init: bool) -> tuple[int, int, int, int]:
            text = next((n for off, n in calls("set_x", base, size) if off == 0), 0)
            ro = calls("set_ro", base, size)
            rodata = next((n for off, n in ro if off == text), 0)
            nx = [n for off, n in calls("set_nx", base, size) if off >= text + rodata]
            ro_after = nx[0] if with_ro_after_init and len(nx) >= 2 else 0
            data = max(size - text - rodata - ro_after, 0)
            return text, data, rodata, ro_after

        t, d, r, ra = layout(core, core_sz, True)
        it, idata, ir, _ = layout(init, init_sz, False)
        return (t, d, r, ra, it, idata, ir), ["module_core", "module_init"]
    sizes = [max(s - PAGE_SIZE, 0) for _, s in w.areas]
    text = sizes[0] if sizes else 0
    return (text, sum(sizes[1:]), 0, 0, 0, 0, 0), ["module_core"] * len(w.areas)
