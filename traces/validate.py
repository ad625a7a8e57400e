"""Validation of schema-v1 traces: every problem, with its row.

:func:`validate_trace` streams a trace in record batches and reports every
problem it finds as a :class:`Problem` (file, 0-based event row, column,
what is wrong, how to fix it).  Memory stays bounded: besides one batch it
keeps only the objects that are live at the current row.

Rules (architecture.md section 2):

- the file is a complete Parquet file with the columns of
  :data:`traces.schema.SCHEMA` (``seq ts_ns cpu op id size`` required, the
  section columns, ``patch_sites`` and ``owner`` optional), integer columns
  of an integer type, ``op``/``owner`` strings, no nulls except in ``owner``;
- every ``op`` is one of :data:`traces.schema.OPS`;
- ``seq`` strictly increases, ``ts_ns`` never decreases;
- a free (``module_unload``, ``bpf_prog_free``, ``exec_free``, ``vfree``,
  ``module_init_free``) names an id that is live in its kind (loaded and not
  yet freed; ``module_init_free`` at most once per load); a load/alloc does
  not reuse an id that is still live.  Ids are per kind: a module and a
  vmalloc area may share an id;
- sizes: ``bpf_prog_load``, ``exec_alloc``, ``vmalloc``, ``mem_pressure``
  need ``size > 0``, a ``module_load`` some section > 0; no size or section
  over :data:`traces.schema.MAX_SIZE_BYTES` (1 TiB);
- section columns are 0 on every op but ``module_load``;
- a ``concurrent`` span (the following events that began while this one
  was in progress) ends within the trace and holds no span of its own.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.schema import ALLOC_FREE, COLUMNS, MAX_SIZE_BYTES, OP_CODE, OPS, SCHEMA, SECTION_COLUMNS

REQUIRED = ("seq", "ts_ns", "cpu", "op", "id", "size")
INTEGER_COLUMNS = tuple(c for c in COLUMNS if c not in ("op", "owner"))
SIZED_OPS = ("bpf_prog_load", "exec_alloc", "vmalloc", "mem_pressure")
INIT_SECTIONS = tuple(c for c in SECTION_COLUMNS if c.startswith("init_"))

#: Object kinds, named by their allocating op; per op code: kind index and action.
KINDS = tuple(ALLOC_FREE)
_ALLOC, _FREE, _INIT_FREE, _INIT = 1, 2, 3, 4
_KIND = np.full(len(OPS), -1, np.int8)
_ACTION = np.zeros(len(OPS), np.int8)
for _k, (_alloc, _free) in enumerate(ALLOC_FREE.items()):
    _KIND[OP_CODE[_alloc]], _ACTION[OP_CODE[_alloc]] = _k, _ALLOC
    _KIND[OP_CODE[_free]], _ACTION[OP_CODE[_free]] = _k, _FREE
_KIND[OP_CODE["module_init_free"]], _ACTION[OP_CODE["module_init_free"]] = KINDS.index("module_load"), _INIT_FREE
_KIND[OP_CODE["module_init"]], _ACTION[OP_CODE["module_init"]] = KINDS.index("module_load"), _INIT
_KIND_L, _ACTION_L = _KIND.tolist(), _ACTION.tolist()
_SIZED = np.isin(np.arange(len(OPS)), [OP_CODE[o] for o in SIZED_OPS])
_OPS_ARRAY = pa.array(OPS, pa.string())


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a trace.  ``row`` is the 0-based event row (None: whole file)."""

    kind: str
    what: str
    fix: str
    file: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = ", ".join(p for p in (self.file, self.row is not None and f"row {self.row}",
                                      self.column and f"column {self.column!r}") if p)
        return f"{where}: {self.what} (fix: {self.fix})"


@dataclass
class _Collector:
    file: str
    limit: int | None
    kept: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, kind: str, what: str, fix: str, row: int | None = None, column: str | None = None) -> None:
        self.counts[kind] += 1
        if self.limit is None or self.counts[kind] <= self.limit:
            self.kept.append(Problem(kind, what, fix, self.file, row, column))

    def rows(self, kind: str, rows: np.ndarray, what, fix: str, column: str | None = None) -> None:
        """Add one problem per row; ``what`` is a string or a function of the batch-local index."""
        n = len(rows)
        if not n:
            return
        keep = n if self.limit is None else max(0, min(n, self.limit - self.counts[kind]))
        for j in range(keep):
            self.kept.append(Problem(kind, what(j) if callable(what) else what, fix, self.file,
                                     int(rows[j]), column))
        self.counts[kind] += n

    def result(self) -> list[Problem]:
        out = sorted(self.kept, key=lambda p: -1 if p.row is None else p.row)
        for kind, n in self.counts.items():
            if self.limit is not None and n > self.limit:
                first = next(p for p in self.kept if p.kind == kind)
                out.append(Problem(kind, f"... and {n - self.limit} more rows with this problem "
                                   f"({n} in all)", first.fix, self.file, None, first.column))
        return out


class Lifetimes:
    """Which objects are live, per kind, as events are fed in order.

    ``live[k]`` maps id -> [load row, bytes, init bytes still held] for kind
    ``KINDS[k]``.  Frees of ids not live are reported through ``problem``.
    When reporting, it remembers the rows of up to :attr:`RECENT` recent frees
    per kind, to tell "already freed at row R" from "never loaded"; older
    frees are forgotten (bounded memory), and then the message says so.
    """

    RECENT = 1 << 16

    def __init__(self, problem=None) -> None:
        self.live: list[dict[int, list[int]]] = [{} for _ in KINDS]
        self.init_freed: set[int] = set()
        self.inited: set[int] = set()
        self.recent: list[dict[int, int]] = [{} for _ in KINDS]
        self.problem = problem

    def feed(self, rows, ops, ids, nbytes, init_bytes) -> None:
        """Feed events in order: numpy arrays of rows, op codes, ids, bytes held, init bytes held."""
        sel = np.flatnonzero(_ACTION[ops])
        module = KINDS.index("module_load")
        for r, op, i, b, ib in zip(rows[sel].tolist(), ops[sel].tolist(), ids[sel].tolist(),
                                   nbytes[sel].tolist(), init_bytes[sel].tolist()):
            k, a = _KIND_L[op], _ACTION_L[op]
            live = self.live[k]
            if a == _ALLOC:
                if i in live and self.problem:
                    self.problem("load_live", f"{OPS[op]} of id {i}, which is still live (loaded at row "
                                 f"{live[i][0]} and not freed)",
                                 "give each live object its own id, or free it first", r, "id")
                live[i] = [r, b, ib]
            elif i not in live:
                if self.problem:
                    freed = self.recent[k].get(i)
                    why = (f"was already freed at row {freed}" if freed is not None
                           else "is not live (never loaded, or freed long before)")
                    self.problem("free_not_live", f"{OPS[op]} of id {i}, which {why}",
                                 f"a {OPS[op]} must follow the {KINDS[k]} of the same id, once", r, "id")
            elif a == _FREE:
                del live[i]
                if self.problem:
                    recent = self.recent[k]
                    if len(recent) >= self.RECENT:
                        recent.clear()
                    recent[i] = r
                if k == module:
                    self.init_freed.discard(i)
                    self.inited.discard(i)
            elif a == _INIT:
                if i in self.inited:
                    if self.problem:
                        self.problem("load_live", f"module_init of id {i}, whose init already ran",
                                     "a module's init runs once per load", r, "id")
                else:
                    self.inited.add(i)
            elif i in self.init_freed:
                if self.problem:
                    self.problem("free_not_live", f"module_init_free of id {i}, whose init sections were "
                                 "already freed", "free a module's init sections once per load", r, "id")
            else:
                self.init_freed.add(i)
                live[i][1] -= live[i][2]
                live[i][2] = 0


def _open(path: Path, out: _Collector) -> pq.ParquetFile | None:
    """Open ``path`` as Parquet, or report why not (a single problem)."""
    fix_write = "regenerate it with 'permtrace trace synth' or an importer; copy it again if it was copied"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
    except FileNotFoundError:
        out.add("not_found", "no such file", "check the path")
        return None
    except OSError as e:
        out.add("unreadable", f"cannot read the file ({e.strerror})", "check the path and permissions")
        return None
    if head != b"PAR1":
        out.add("not_parquet", "not a Parquet file (it does not start with the Parquet magic 'PAR1')",
                "pass a trace written by 'permtrace trace synth' or an importer")
        return None
    if tail != b"PAR1" or size < 12:
        out.add("truncated", f"truncated Parquet file: it starts like Parquet but its footer is missing "
                f"({size} bytes; cut short by an interrupted copy or a crashed writer)", fix_write)
        return None
    try:
        return pq.ParquetFile(path, pre_buffer=False)  # stream (see traces.io._open)
    except (pa.ArrowException, OSError) as e:
        out.add("truncated", f"corrupt Parquet footer ({e})", fix_write)
        return None


def _check_schema(schema: pa.Schema, out: _Collector) -> bool:
    """Report missing or mistyped columns; True when rows can be checked."""
    ok = True
    for name in COLUMNS:
        if name not in schema.names:
            if name in REQUIRED:
                out.add("missing_column", f"missing column {name!r}",
                        f"add it: every trace needs {', '.join(REQUIRED)}", column=name)
                ok = False
            continue
        t = schema.field(name).type
        if name in ("op", "owner"):
            good = pa.types.is_string(t) or pa.types.is_large_string(t) or (
                pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))
        else:
            good = pa.types.is_integer(t)
        if not good:
            want = "string" if name in ("op", "owner") else str(SCHEMA.field(name).type)
            out.add("mistyped_column", f"column {name!r} has type {t}, expected {want}",
                    f"write {name!r} as {want} (traces.io.write_trace casts to the schema)", column=name)
            ok = False
    return ok


def _np(col: pa.Array, dtype) -> np.ndarray:
    return pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def validate_trace(path: str | os.PathLike, limit_per_kind: int | None = 1000,
                   batch_size: int = 1 << 16) -> list[Problem]:
    """Every problem of the trace at ``path``; an empty list when it is valid.

    At most ``limit_per_kind`` problems of each kind are returned, in row
    order, followed by one summary problem per kind that had more ("... and
    N more rows"); all are detected and counted.  ``None`` keeps all.
    """
    path = Path(path)
    out = _Collector(str(path), limit_per_kind)
    pf = _open(path, out)
    if pf is None or not _check_schema(pf.schema_arrow, out):
        return out.result()
    names = [c for c in COLUMNS if c in pf.schema_arrow.names]
    sections = [c for c in SECTION_COLUMNS if c in names]
    life = Lifetimes(out.add)
    span = [-1, -1, pf.metadata.num_rows]     # row and last row of the open concurrent span; rows
    prev_seq = prev_ts = None
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size, columns=names):
            if batch.num_rows:
                prev_seq, prev_ts = _check_batch(batch, start, names, sections, out, life, prev_seq, prev_ts,
                                                 span)
            start += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        out.add("truncated", f"cannot read rows from {start} on: truncated or corrupt data ({e})",
                "regenerate the trace or copy it again", row=start)
    return out.result()


def _check_batch(batch: pa.RecordBatch, start: int, names, sections, out: _Collector, life: Lifetimes,
                 prev_seq: int | None, prev_ts: int | None, span: list[int]) -> tuple[int, int]:
    """Check one non-empty batch starting at file row ``start``; returns its last seq and ts_ns.

    ``span``: [row, last row] of the open ``concurrent`` span, and the trace's row count (updated)."""
    n = batch.num_rows
    rows = np.arange(start, start + n, dtype=np.int64)
    for name in names:
        col = batch.column(name)
        if name != "owner" and col.null_count:
            bad = rows[col.is_null().to_numpy(zero_copy_only=False)]
            out.rows("null_value", bad, f"{name} is null", f"every event needs a {name}", name)
        if name in INTEGER_COLUMNS and pa.types.is_signed_integer(col.type):
            neg = rows[_np(col, np.int64) < 0]
            out.rows("negative_value", neg, f"{name} is negative", f"{name} is unsigned", name)

    op_col = batch.column("op")
    if pa.types.is_dictionary(op_col.type):
        op_col = op_col.cast(op_col.type.value_type)
    code = pc.index_in(op_col, value_set=_OPS_ARRAY)
    unknown = code.is_null().to_numpy(zero_copy_only=False) & op_col.is_valid().to_numpy(zero_copy_only=False)
    if unknown.any():
        bad = np.flatnonzero(unknown)
        out.rows("unknown_op", rows[bad], lambda j: f"unknown op {op_col[int(bad[j])].as_py()!r}",
                 f"ops are: {', '.join(OPS)}", "op")
    ops = _np(code, np.int64)
    known = ~unknown & op_col.is_valid().to_numpy(zero_copy_only=False)

    last = []
    for name, prev_value, kind, what, fix in (
        ("seq", prev_seq, "seq_not_increasing", "does not increase", "seq must strictly increase: sort the "
         "events by seq and renumber duplicates"),
        ("ts_ns", prev_ts, "ts_backwards", "goes backwards", "ts_ns must not decrease in seq order: take "
         "timestamps from one monotonic clock"),
    ):
        v = _np(batch.column(name), np.uint64)
        last.append(int(v[-1]))
        prev = np.concatenate([[v[0] if prev_value is None else prev_value], v[:-1]]).astype(np.uint64)
        bad = np.flatnonzero(v <= prev if name == "seq" else v < prev)
        if name == "seq" and prev_value is None:
            bad = bad[bad > 0]
        out.rows(kind, rows[bad], lambda j: f"{name} {what}: {int(v[bad[j]])} after {int(prev[bad[j]])} "
                 "on the previous row", fix, name)

    size = _np(batch.column("size"), np.uint64)
    sized = known & _SIZED[np.where(known, ops, 0)]
    bad = np.flatnonzero(sized & (size == 0))
    out.rows("zero_size", rows[bad], lambda j: f"{OPS[ops[bad[j]]]} with size 0",
             "give the request's size in bytes", "size")
    bad = np.flatnonzero(size > MAX_SIZE_BYTES)
    out.rows("absurd_size", rows[bad], lambda j: f"size {int(size[bad[j]])} bytes is over 1 TiB",
             "sizes are bytes; check the unit and the value", "size")

    is_module = known & (ops == OP_CODE["module_load"])
    total = np.zeros(n, np.uint64)
    init = np.zeros(n, np.uint64)
    for c in sections:
        v = _np(batch.column(c), np.uint64)
        bad = np.flatnonzero(v > MAX_SIZE_BYTES)
        out.rows("absurd_size", rows[bad], lambda j: f"{c} {int(v[bad[j]])} bytes is over 1 TiB",
                 "sizes are bytes; check the unit and the value", c)
        bad = np.flatnonzero(known & ~is_module & (v != 0))
        out.rows("sections_on_non_module", rows[bad], lambda j: f"{c} is {int(v[bad[j]])} on a {OPS[ops[bad[j]]]}",
                 "module section sizes belong to module_load only: set them to 0", c)
        total += np.minimum(v, MAX_SIZE_BYTES)
        if c in INIT_SECTIONS:
            init += np.minimum(v, MAX_SIZE_BYTES)
    bad = np.flatnonzero(is_module & (total == 0))
    out.rows("zero_size", rows[bad], "module_load with all section sizes 0",
             "give the module's section sizes in bytes (text_size, data_size, ...)", "text_size")

    if "concurrent" in names:
        conc = _np(batch.column("concurrent"), np.int64)
        for j in np.flatnonzero(conc).tolist():
            r, m = start + j, int(conc[j])
            if r <= span[1]:
                out.add("nested_concurrent", f"concurrent {m} inside the span of row {span[0]} "
                        f"(concurrent {span[1] - span[0]})", "spans do not nest: end the outer span "
                        "before this row or set this row's concurrent to 0", row=r, column="concurrent")
            elif r + m >= span[2]:
                out.add("concurrent_past_end", f"concurrent {m} runs past the last row ({span[2] - 1})",
                        "count only events that follow in the trace", row=r, column="concurrent")
            else:
                span[:2] = r, r + m

    ids = _np(batch.column("id"), np.uint64)
    nbytes = np.where(is_module, total, size)
    life.feed(rows[known], ops[known], ids[known], nbytes[known], init[known])
    return last[0], last[1]


@dataclass
class TraceSummary:
    """What ``permtrace trace info`` prints: counts and bytes per op, live objects at the end.

    ``per_op``: op -> (events, bytes, patch_sites); bytes are ``size`` except
    for ``module_load`` (the sum of its sections).  ``live``: kind (the
    allocating op) -> (objects, bytes) live after the last event; a module's
    bytes drop by its init sections once ``module_init_free`` ran.
    """

    meta: dict[str, str]
    n_events: int
    first_ts_ns: int | None
    last_ts_ns: int | None
    per_op: dict[str, tuple[int, int, int]]
    live: dict[str, tuple[int, int]]


def trace_summary(path: str | os.PathLike, batch_size: int = 1 << 16) -> TraceSummary:
    """Stream the trace once and summarize it (bounded memory: one batch plus live objects)."""
    from traces.io import iter_event_batches, read_metadata
    per_op = {op: [0, 0, 0] for op in OPS}
    life = Lifetimes()
    n, first, last = 0, None, None
    for b in iter_event_batches(path, batch_size):
        ops = b["op"].astype(np.int64)
        is_module = ops == OP_CODE["module_load"]
        total = sum(b[c] for c in SECTION_COLUMNS)
        init = sum(b[c] for c in INIT_SECTIONS)
        nbytes = np.where(is_module, total, b["size"])
        for code in np.unique(ops).tolist():
            m = ops == code
            acc = per_op[OPS[code]]
            acc[0] += int(m.sum())
            acc[1] += int(nbytes[m].sum())
            acc[2] += int(b["patch_sites"][m].sum(dtype=np.uint64))
        life.feed(b["row"], ops, b["id"], nbytes, np.where(is_module, init, 0))
        if len(ops):
            first = int(b["ts_ns"][0]) if first is None else first
            last = int(b["ts_ns"][-1])
            n += len(ops)
    live = {KINDS[k]: (len(d), sum(v[1] for v in d.values())) for k, d in enumerate(life.live)}
    return TraceSummary(read_metadata(path), n, first, last,
                        {op: tuple(v) for op, v in per_op.items() if v[0]}, live)
