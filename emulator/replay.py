"""``replay``: stream a trace through a booted kernel under one policy.

The loop sees Python lists of ints made once per record batch
(``.tolist()``), dispatches on the op code with the common ops first, and
never builds per-event objects; memory is bounded by the batch size and
by the live state of the emulated kernel, not by trace length.

Concurrency: an event with ``concurrent = m`` runs with the next ``m``
events (those that began while it was in progress) interleaved: they run
after its first CPA (``Kernel.concurrent``).  One on the op's own CPU ran
while the op was preempted, so it runs whole; one on another CPU ran in
parallel, and what it finishes only after the op (``Kernel.defer``) runs
when the op returns.  An op that makes no CPA gets them after it.
Simplification: one interleaving point per op, where the kernel's other
CPUs may land between any two of its steps.
"""

from __future__ import annotations

import gc
import os
from functools import partial

import numpy as np
import pyarrow as pa

from emulator.errors import KernelFault, ReplayError
from emulator.machine import Machine
from emulator.policies.base import Policy
from emulator.result import WASTE_CAUSES, ReplayResult
from emulator.vmalloc import VMALLOC_STACK
from traces.io import iter_event_batches, num_events, read_metadata
from traces.schema import OP_CODE, OPS, OWNERS, SECTION_COLUMNS, THREAD_STACK

#: Counters sampled into the timeline (plus DirectMap4k and live waste).
TIMELINE_COUNTERS: tuple[str, ...] = (
    "emu_shootdowns", "emu_shootdown_ipis", "emu_flush_tlb_all", "emu_flush_tlb_kernel_range",
    "emu_cpa_flush", "emu_vmap_purges", "emu_local_flush", "emu_sync_core_ipis",
    "direct_map_level2_splits", "direct_map_level3_splits",
)

(MODULE_LOAD, MODULE_INIT_FREE, MODULE_UNLOAD, BPF_PROG_LOAD, BPF_PROG_FREE, EXEC_ALLOC,
 EXEC_FREE, VMALLOC, VFREE, TEXT_PATCH, MEM_PRESSURE, MODULE_INIT) = (OP_CODE[o] for o in OPS[:12])
THREAD_STACK_CODE = OWNERS.index(THREAD_STACK)


def _whole_spans(batches):
    """Record batches re-cut so that no ``concurrent`` span crosses a batch boundary."""
    carry = None
    for cols in batches:
        if carry is not None:
            cols = {name: np.concatenate((carry[name], col)) for name, col in cols.items()}
            carry = None
        conc = cols["concurrent"]
        starts = np.flatnonzero(conc)
        over = starts[starts + conc[starts] >= len(conc)]
        if over.size:
            cut = int(over[0])
            carry = {name: col[cut:] for name, col in cols.items()}
            cols = {name: col[:cut] for name, col in cols.items()}
        yield cols
    if carry is not None:
        yield carry                 # the trace ends inside a span (validate reports it): run what is there


def _sample_points(n: int, points: int) -> list[int]:
    """Event indices after which the timeline is sampled; the last is ``n - 1``."""
    if n <= 0:
        return []
    points = max(1, min(points, n))
    return sorted({(n * (j + 1) + points - 1) // points - 1 for j in range(points)})


def replay(trace: str | os.PathLike | pa.Table, policy: Policy, machine: Machine, seed: int = 0, *,
           timeline_points: int = 256, batch_size: int = 65536) -> ReplayResult:
    """Replay ``trace`` (a path or a pyarrow Table) under ``policy`` on ``machine``.

    Raises :class:`ReplayError` (row, ts_ns, op, id) for an event the
    kernel cannot serve; trace-format problems raise ``TraceError``.

    The cyclic garbage collector is off meanwhile: the emulated kernel's
    state is lists, dicts and tuples of ints without cycles, so the
    collector's passes over them (~2% of a replay) find nothing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _replay(trace, policy, machine, seed, timeline_points, batch_size)
    finally:
        if enabled:
            gc.enable()


def _replay(trace, policy: Policy, machine: Machine, seed: int, timeline_points: int,
            batch_size: int) -> ReplayResult:
    # a trace's first ``warmup_events`` rebuild its starting state (the boot's BPF pack...):
    # the page allocator's boot holes come after them
    holes_at = int(read_metadata(trace).get("warmup_events") or 0) or None
    k = machine.boot(seed, boot_holes=holes_at is None)
    policy.attach(k)
    n_total = num_events(trace)
    samples = _sample_points(n_total, timeline_points)
    tl_index: list[int] = []
    tl_ts: list[int] = []
    tl_rows: list[list[int]] = []
    stats = [k.op_stats(op) for op in OPS]
    for d in stats:
        d["events"] = 0
    stats.append(stats[VMALLOC])              # VMALLOC_STACK: counted as a vmalloc
    p = policy
    module_load, module_init_free, module_unload = p.module_load, p.module_init_free, p.module_unload
    bpf_prog_load, bpf_prog_free, exec_alloc, exec_free = p.bpf_prog_load, p.bpf_prog_free, p.exec_alloc, p.exec_free
    vmalloc, vfree, text_patch, mem_pressure = p.vmalloc, p.vfree, p.text_patch, p.mem_pressure
    module_init = p.module_init
    cols: dict[str, np.ndarray] = {}      # the current batch (dispatch reads module and exec columns)
    row0 = 0                               # its first row in the file

    def dispatch(i: int, op: int, id: int, size: int, ts: int) -> None:
        """One event to its policy hook, with ``k.now`` and ``k.stat`` set for it."""
        k.now = ts
        k.stat = stats[op]
        if op == BPF_PROG_LOAD:
            bpf_prog_load(id, size)
        elif op == BPF_PROG_FREE:
            bpf_prog_free(id)
        elif op == VMALLOC or op == VMALLOC_STACK:   # an overriding policy sees no alignment
            vmalloc(id, size)
        elif op == VFREE:
            vfree(id)
        elif op == MODULE_LOAD:
            module_load(id, tuple(int(cols[c][i - row0]) for c in SECTION_COLUMNS),
                        int(cols["patch_sites"][i - row0]))
        elif op == MODULE_INIT_FREE:
            module_init_free(id)
        elif op == MODULE_UNLOAD:
            module_unload(id)
        elif op == EXEC_ALLOC:
            exec_alloc(id, size, int(cols["owner"][i - row0]))
        elif op == EXEC_FREE:
            exec_free(id)
        elif op == TEXT_PATCH:
            text_patch(int(cols["patch_sites"][i - row0]))
        elif op == MEM_PRESSURE:
            mem_pressure(size)
        elif op == MODULE_INIT:
            module_init(id)

    if type(p).vmalloc is Policy.vmalloc and type(p).vfree is Policy.vfree:
        # plain vmalloc/vfree (~88% of a busy host's events) are served inside the kernel's loop
        run = partial(k.vm.run, dispatch=dispatch, stat_vmalloc=stats[VMALLOC], stat_vfree=stats[VFREE])
    else:
        def run(events) -> None:
            for ev in events:
                try:
                    dispatch(*ev)
                except KernelFault as e:
                    if getattr(e, "row_index", None) is None:     # not already named by a nested run
                        e.row_index = ev[0]
                    raise
    si = 0
    base = 0
    t_first = None
    t_last = 0

    def sample(idx: int, ts: int) -> None:
        tot = {c: 0 for c in TIMELINE_COUNTERS}
        for d in k.per_op.values():
            for c in TIMELINE_COUNTERS:
                tot[c] += d[c]
        tl_index.append(idx)
        tl_ts.append(ts)
        tl_rows.append([tot[c] for c in TIMELINE_COUNTERS]
                       + [k.dm.meminfo_kb()["DirectMap4k"], sum(k.waste_live)] + list(k.waste_live))

    def run_span(lo: int, hi: int) -> None:
        """Run event ``lo`` with events ``lo+1 .. hi-1`` (they began while it ran) interleaved."""
        nested = list(events(lo + 1, hi))
        cpus = cols["cpu"][lo:hi].tolist()
        deferred = []

        def concurrent() -> None:
            k.concurrent = None
            stat, now = k.stat, k.now
            for ev, cpu in zip(nested, cpus[1:]):
                # on the op's CPU an event ran while the op was preempted; on another, in parallel
                k.deferred = None if cpu == cpus[0] else deferred
                run((ev,))
            k.stat, k.now, k.deferred = stat, now, None
            nested.clear()

        k.concurrent = concurrent
        try:
            run(events(lo, lo + 1))
        finally:
            k.concurrent = k.deferred = None
        run(nested)                 # an op without CPAs: after it
        for k.stat, k.now, work in deferred:
            work()

    for cols in _whole_spans(iter_event_batches(trace, batch_size)):
        n = len(cols["op"])
        if n == 0:
            continue
        counts = np.bincount(cols["op"], minlength=len(OPS))
        for code in np.flatnonzero(counts):
            stats[code]["events"] += int(counts[code])
        op = cols["op"]
        stack = (op == VMALLOC) & (cols["owner"] == THREAD_STACK_CODE)
        ops = (np.where(stack, VMALLOC_STACK, op) if stack.any() else op).tolist()
        ids = cols["id"].tolist()
        sizes = cols["size"].tolist()
        tss = cols["ts_ns"].tolist()
        row0 = int(cols["row"][0])
        if k.vm.nodes:                      # vmap nodes pick the pool by the event's CPU
            k.vm.batch_cpu, k.vm.batch_row0 = cols["cpu"].tolist(), row0
        if t_first is None:
            t_first = tss[0]
        conc = cols["concurrent"]
        spans = np.flatnonzero(conc).tolist()
        sj = 0
        lo = 0

        def events(a: int, b: int):
            return zip(range(row0 + a, row0 + b), ops[a:b], ids[a:b], sizes[a:b], tss[a:b])
        try:
            while lo < n:
                hi = n if si >= len(samples) else min(n, samples[si] - base + 1)
                while sj < len(spans) and spans[sj] < lo:    # inside an earlier span (invalid trace)
                    sj += 1
                if sj < len(spans) and spans[sj] < hi:
                    hi = spans[sj]
                if holes_at is not None:
                    hi = min(hi, max(holes_at - base, lo + 1))
                if lo < hi:
                    run(events(lo, hi))
                else:                           # lo starts a span
                    hi = min(n, lo + 1 + int(conc[lo]))     # a span past the end: what there is
                    run_span(lo, hi)
                    sj += 1
                if holes_at is not None and base + hi >= holes_at:
                    k.pages.boot_holes()
                    holes_at = None
                while si < len(samples) and base + hi - 1 >= samples[si]:
                    sample(samples[si], tss[hi - 1])
                    si += 1
                lo = hi
        except KernelFault as e:
            i = e.row_index - row0
            raise ReplayError(str(e), row=e.row_index, ts_ns=tss[i], op=OPS[cols["op"][i]], id=ids[i],
                              file=None if isinstance(trace, pa.Table) else str(trace)) from None
        base += n
        t_last = tss[-1]

    counters = k.totals()
    counters.update(k.dm.meminfo_kb())
    counters.update(k.waste_counters(t_first or 0, t_last))
    counters["emu_text_tlb_entries_4k"], counters["emu_text_tlb_entries_2m"] = policy.text_tlb_entries()
    counters["events"] = base
    per_op = {OPS[c]: {**stats[c]} for c in range(len(OPS)) if stats[c]["events"]}
    names = list(TIMELINE_COUNTERS) + ["DirectMap4k", "emu_waste_bytes"] + \
        [f"emu_waste_bytes_{c}" for c in WASTE_CAUSES]
    rows = np.array(tl_rows, dtype=np.int64).reshape(len(tl_rows), len(names))
    timeline = {"event_index": np.array(tl_index, np.int64), "ts_ns": np.array(tl_ts, np.uint64)}
    for j, name in enumerate(names):
        timeline[name] = rows[:, j].copy()
    return ReplayResult(
        counters=counters, per_op=per_op, timeline=timeline, direct_map=k.dm.level.copy(), n_events=base,
        meta={"policy": type(policy).__name__, "seed": str(seed)},
    )

