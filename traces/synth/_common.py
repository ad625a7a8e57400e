"""Shared machinery of the synthetic workloads: a streaming event engine.

A scenario is a list of *sources*.  Each source is a generative process
with one method, ``window(t0, t1) -> Events``: the events it starts in the
time window ``[t0, t1)`` (ns).  Follow-up events of something started in the
window (the free of an object, the ``module_init_free`` after a load) may
lie in the future; the engine keeps those pending and emits every event
in time order.  Rules a source keeps so that every trace is valid by
construction:

- every event it returns has ``ts >= t0``;
- an object's free comes strictly after its allocation (delays >= 1 us);
- ids come from the engine's :class:`Ids` (unique over the whole trace, so
  never reused while live).

The engine works one time window at a time, sized adaptively to hold about
:data:`WINDOW_EVENTS` events, so memory stays bounded by one window plus the
pending follow-ups (the live objects with a finite lifetime), and writes
record batches of :data:`BATCH_ROWS` rows.  Everything is numpy, vectorized
per window; randomness comes from ``numpy.random.default_rng`` streams
spawned from the one seed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from traces.errors import PermtraceError
from traces.schema import ALLOC_FREE, OP_CODE, OPS, SECTION_COLUMNS

BATCH_ROWS = 1 << 16
WINDOW_EVENTS = 1 << 16
NS_PER_S = 1_000_000_000
US = 1_000
MS = 1_000_000
PAGE_SIZE = 4096
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: Event columns handled by the engine (``seq`` and ``cpu`` are added on output).
COLUMNS = ("ts", "op", "id", "size", "owner", *SECTION_COLUMNS, "patch_sites")
_DTYPES = {"ts": np.uint64, "op": np.uint8, "id": np.uint64, "size": np.uint64,
           "owner": np.int32, "patch_sites": np.uint32, **{c: np.uint64 for c in SECTION_COLUMNS}}

Events = dict[str, np.ndarray]


@dataclass(frozen=True)
class Params:
    """What every scenario takes (the CLI options of ``permtrace trace synth``)."""

    seed: int
    nr_cpus: int
    mem_total_bytes: int
    duration_ns: int
    events: int | None = None  # stop after this many events (None: at duration_ns)


def parse_size(text: str | int) -> int:
    """``"64G"``, ``"512M"``, ``"4K"``, ``"1T"`` or plain bytes -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise PermtraceError(f"bad size {text!r} (fix: write e.g. 64G, 512M, 4K or a byte count)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def parse_duration(text: str | int | float) -> int:
    """``"24h"``, ``"30m"``, ``"90s"``, ``"250ms"`` or plain seconds -> ns."""
    if isinstance(text, (int, float)):
        return int(text * NS_PER_S)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text))
    if not m:
        raise PermtraceError(f"bad duration {text!r} (fix: write e.g. 24h, 30m, 90s or 250ms)")
    unit = {"ms": 1e-3, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(float(m.group(1)) * unit * NS_PER_S)


def fresh_direct_map(mem_total_bytes: int) -> dict[str, int]:
    """``DirectMap4k/2M/1G`` (kB) of a freshly booted x86-64 machine with this much memory.

    Modelled on this project's 6.18 host right after boot (DirectMap4k
    28672 kB, DirectMap2M 2068480 kB, the rest 1G): the kernel maps the
    first 2 GiB with 2 MiB pages, of which 28 MiB are already 4K (the first
    2 MiB below 1 MiB and the kernel image's boundaries, split by
    ``init_mem_mapping`` / ``mark_rodata_ro``), and everything above with
    1 GiB pages (``X86_FEATURE_GBPAGES``).  Simplified: no PCI hole, and a
    tail that is not a whole GiB is mapped with 2M then 4K pages.
    """
    total_kb = mem_total_bytes // KiB
    low_kb = min(total_kb, 2 * GiB // KiB)
    k4 = min(28672, low_kb)
    m2 = (low_kb - k4) // 2048 * 2048
    k4 = low_kb - m2
    rest = total_kb - low_kb
    g1 = rest // (GiB // KiB) * (GiB // KiB)
    m2_tail = (rest - g1) // 2048 * 2048
    return {"DirectMap4k": k4 + rest - g1 - m2_tail, "DirectMap2M": m2 + m2_tail, "DirectMap1G": g1}


class Ids:
    """Object ids: one counter for the whole trace, so ids are never reused."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.uint64)
        self.next += n
        return out


class Owners:
    """Owner strings, stored per event as an int32 code (-1: none)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}

    def code(self, name: str) -> int:
        if name not in self._code:
            self._code[name] = len(self.names)
            self.names.append(name)
        return self._code[name]


def make_events(ts, op, **cols) -> Events:
    """Events with these timestamps; ``op`` a name, a code or a code array; other
    columns given as arrays or scalars (missing ones are 0, owner -1)."""
    ts = np.asarray(ts, dtype=np.uint64)
    n = len(ts)
    if isinstance(op, str):
        op = OP_CODE[op]
    out = {"ts": ts}
    for c in COLUMNS[1:]:
        v = op if c == "op" else cols.pop(c, -1 if c == "owner" else 0)
        out[c] = np.broadcast_to(np.asarray(v).astype(_DTYPES[c], copy=False), (n,))
    if cols:
        raise TypeError(f"unknown event columns {sorted(cols)}")
    return out


def concat(parts: list[Events]) -> Events:
    parts = [p for p in parts if p and len(p["ts"])]
    if not parts:
        return make_events(np.empty(0, np.uint64), 0)
    return {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}


def take(ev: Events, idx) -> Events:
    return {c: ev[c][idx] for c in COLUMNS}


def arrivals(rng: np.random.Generator, rate_per_s: float, t0: int, t1: int) -> np.ndarray:
    """Poisson arrivals at ``rate_per_s`` in ``[t0, t1)``: sorted ns timestamps."""
    n = rng.poisson(rate_per_s * (t1 - t0) / NS_PER_S)
    return np.sort(rng.integers(t0, t1, size=n, dtype=np.int64)).astype(np.uint64)


def lognormal(rng: np.random.Generator, median: float, sigma: float, n: int,
              lo: float = 1.0, hi: float = np.inf) -> np.ndarray:
    """``n`` lognormal draws with this median, clipped to ``[lo, hi]``, as int64."""
    return np.clip(median * np.exp(sigma * rng.standard_normal(n)), lo, hi).astype(np.int64)


#: Lifetime value meaning "lives to the end of the trace" (no free emitted).
FOREVER = -1


def object_events(ts, lifetime, alloc_op: str, ids, *, free_delay: int = 0, **cols) -> Events:
    """Allocation events at ``ts`` and, where ``lifetime != FOREVER``, their frees
    at ``ts + lifetime + free_delay`` (the op :data:`traces.schema.ALLOC_FREE` pairs)."""
    ts = np.asarray(ts, dtype=np.uint64)
    lifetime = np.broadcast_to(np.asarray(lifetime, dtype=np.int64), ts.shape)
    alloc = make_events(ts, alloc_op, id=ids, **cols)
    dies = lifetime != FOREVER
    owner = cols.get("owner", -1)
    owner = np.broadcast_to(np.asarray(owner), ts.shape)[dies]
    free = make_events(ts[dies] + np.maximum(lifetime[dies], US).astype(np.uint64) + np.uint64(free_delay),
                       ALLOC_FREE[alloc_op], id=ids[dies], owner=owner)
    return concat([alloc, free])


# -- BPF program loads (shared by bpf-churn, seccomp-storm, tracing-session, mixed-fleet) --

#: JIT image size model (bytes): lognormal with median 500 B and P(< 2 KiB) = 0.75,
#: i.e. sigma = ln(2048/500)/z(0.75) = 2.09, clipped to [25 B, 1 MiB].  Source: Song
#: Liu, "[PATCH bpf-next v5 0/6] execmem_alloc for BPF programs" (28 Nov 2022): "50%
#: of the loaded BPF programs are less than 500 byte in size, and 75% of them are less
#: than 2kB".  25 B is the smallest image measured on 6.18 (groundtruth/REPORT.md).
BPF_JIT_MEDIAN, BPF_JIT_SIGMA, BPF_JIT_MIN, BPF_JIT_MAX = 500, np.log(2048 / 500) / 0.6745, 25, 1 * MiB

#: Approximate x86-64 figures used to size the plain vmalloc areas of a load:
#: JIT bytes per BPF instruction (measured 7 B for ``mov64``; ~6 B on average is an
#: assumption), ``offsetof(struct bpf_prog, insns)`` and
#: ``sizeof(struct bpf_insn_aux_data)`` (both vary by release; approximate).
JIT_BYTES_PER_INSN, BPF_PROG_HDR, INSN_AUX_BYTES, BPF_INSN_BYTES = 6, 72, 80, 8


def bpf_jit_sizes(rng: np.random.Generator, n: int, median: float = BPF_JIT_MEDIAN,
                  sigma: float = BPF_JIT_SIGMA) -> np.ndarray:
    return lognormal(rng, median, sigma, n, BPF_JIT_MIN, BPF_JIT_MAX)


def bpf_load_events(ids: Ids, ts, jit_size, lifetime, owner, *, classic: bool) -> Events:
    """The events of BPF program loads starting at ``ts`` (one syscall each).

    What a load does, measured on 6.18 (groundtruth/REPORT.md, "What a load
    does"): an eBPF load allocates 3 plain vmalloc areas, the program
    (``bpf_prog_alloc_no_stats``: page-rounded ``bpf_prog_size``), the
    verifier's aux data (``bpf_check``: vzalloc of one
    ``bpf_insn_aux_data`` per insn) and a copy for ``bpf_prog_calc_tag``;
    the last two are vfree'd before the syscall returns.  A classic BPF
    load (``bpf_prog_create_from_user``, seccomp, SO_ATTACH_FILTER)
    allocates only the program.  Then the JIT image goes live
    (``bpf_prog_load``).  At release, ``bpf_prog_free`` and, after an RCU
    grace period (``bpf_prog_free_deferred``), the program area is vfree'd.
    Simplified: ``bpf_prog_realloc`` growth of the program area is not
    modelled.
    """
    ts = np.asarray(ts, dtype=np.uint64)
    n = len(ts)
    jit_size = np.asarray(jit_size, dtype=np.int64)
    insns = np.maximum(jit_size // JIT_BYTES_PER_INSN, 2)
    prog_bytes = (BPF_PROG_HDR + insns * BPF_INSN_BYTES + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    lifetime = np.broadcast_to(np.asarray(lifetime, dtype=np.int64), (n,))
    parts = [object_events(ts, lifetime, "vmalloc", ids.take(n), free_delay=40 * US, size=prog_bytes)]
    t_load = ts + np.uint64(10 * US)
    if not classic:
        aux, tag = ids.take(n), ids.take(n)
        parts += [
            make_events(ts + np.uint64(2 * US), "vmalloc", id=aux, size=insns * INSN_AUX_BYTES),
            make_events(ts + np.uint64(4 * US), "vmalloc", id=tag, size=insns * BPF_INSN_BYTES),
            make_events(ts + np.uint64(5 * US), "vfree", id=tag),
            make_events(ts + np.uint64(8 * US), "vfree", id=aux),
        ]
    # the program is released before its vmalloc area: bpf_prog_free at ts+10us+L,
    # the area's vfree at ts+L+40us (object_events above adds the 40 us delay).
    parts.append(object_events(t_load, lifetime, "bpf_prog_load", ids.take(n), size=jit_size, owner=owner))
    return concat(parts)


# -- the engine ---------------------------------------------------------------

def _record_batch(ev: Events, seq0: int, cpu: np.ndarray, owners: Owners) -> pa.RecordBatch:
    n = len(ev["ts"])
    owner = ev["owner"]
    arrays = {
        "seq": pa.array(np.arange(seq0, seq0 + n, dtype=np.uint64)),
        "ts_ns": pa.array(ev["ts"]),
        "cpu": pa.array(cpu),
        "op": pa.DictionaryArray.from_arrays(pa.array(ev["op"].astype(np.int8)), pa.array(OPS)),
        "id": pa.array(ev["id"]),
        "size": pa.array(ev["size"]),
        "owner": pa.DictionaryArray.from_arrays(
            pa.array(np.maximum(owner, 0), mask=owner < 0, type=pa.int32()), pa.array(owners.names, pa.string())),
        **{c: pa.array(ev[c]) for c in SECTION_COLUMNS},
        "patch_sites": pa.array(ev["patch_sites"]),
    }
    return pa.RecordBatch.from_pydict(arrays)     # write_trace conforms it (``concurrent`` = 0)


def run(sources: list, params: Params, owners: Owners) -> Iterator[pa.RecordBatch]:
    """Drive ``sources`` from t=0 to ``params.duration_ns`` (or ``params.events``
    events), yielding record batches of :data:`BATCH_ROWS` rows (the last one
    shorter) in time order."""
    cpu_rng = np.random.default_rng([params.seed, 0xC0])
    pending = concat([])
    ready: list[Events] = []
    t, window, emitted, buffered = 0, NS_PER_S, 0, 0
    limit = params.events if params.events is not None else np.iinfo(np.int64).max

    def flush(upto: int) -> Iterator[pa.RecordBatch]:
        nonlocal ready, buffered, emitted
        out = concat(ready)
        lo = 0
        while buffered - lo >= upto and buffered > lo:
            hi = min(lo + BATCH_ROWS, buffered)
            cpu = cpu_rng.integers(0, params.nr_cpus, size=hi - lo).astype(np.uint16)
            yield _record_batch(take(out, slice(lo, hi)), emitted, cpu, owners)
            emitted += hi - lo
            lo = hi
        ready, buffered = [take(out, slice(lo, None))], buffered - lo

    while t < params.duration_ns and emitted + buffered < limit:
        t1 = min(t + window, params.duration_ns)
        new = concat([pending] + [s.window(t, t1) for s in sources])
        due = new["ts"] < np.uint64(t1)
        pending = take(new, ~due)
        out = take(new, np.flatnonzero(due)[np.argsort(new["ts"][due], kind="stable")])
        n = min(len(out["ts"]), limit - emitted - buffered)
        ready.append(take(out, slice(0, n)))
        buffered += n
        yield from flush(BATCH_ROWS)
        # size the next window to hold about WINDOW_EVENTS events
        window = int(np.clip(window * WINDOW_EVENTS / max(len(out["ts"]), 1), MS, 2 * window))
        t = t1
    yield from flush(1)
