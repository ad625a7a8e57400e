"""Reading and writing schema-v1 traces, streaming in record batches.

Writers take Arrow tables or record batches and write atomically (a
temporary file in the target directory, then ``os.replace``), so a crash
never leaves half a trace.  Readers never load more than one record batch
at a time unless asked to (:func:`read_trace`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.errors import TraceError
from traces.schema import (
    COLUMNS,
    META_PREFIX,
    OPS,
    OWNERS,
    SCHEMA,
    SCHEMA_VERSION,
)

TraceSource = str | os.PathLike | pa.Table

_OPS_ARRAY = pa.array(OPS, pa.string())
_OWNERS_ARRAY = pa.array(OWNERS, pa.string())


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _meta_bytes(metadata: Mapping[str, object]) -> dict[bytes, bytes]:
    meta = {"schema_version": SCHEMA_VERSION, **metadata}
    return {(META_PREFIX + k).encode(): str(v).encode() for k, v in meta.items() if v is not None}


def conform(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Cast a batch or table to :data:`traces.schema.SCHEMA` (column order and types).

    Missing section columns, ``patch_sites`` and ``concurrent`` are filled with 0, a missing
    ``owner`` with nulls; a missing core column raises :class:`TraceError`.
    """
    n = batch.num_rows
    arrays = []
    for field in SCHEMA:
        if field.name in batch.schema.names:
            col = batch.column(field.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            arrays.append(col.cast(field.type))
        elif field.name in ("owner",):
            arrays.append(pa.nulls(n, pa.string()))
        elif field.name.endswith("_size") or field.name in ("patch_sites", "concurrent"):
            arrays.append(pa.array(np.zeros(n, dtype=field.type.to_pandas_dtype())))
        else:
            raise TraceError(f"missing column {field.name!r}", column=field.name,
                             hint=f"every trace needs the columns {', '.join(COLUMNS[:6])}")
    if isinstance(batch, pa.Table):
        return pa.Table.from_arrays(arrays, schema=SCHEMA)
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def write_trace(path: str | os.PathLike, data: pa.Table | Iterable[pa.RecordBatch],
                metadata: Mapping[str, object] | None = None) -> Path:
    """Write a trace (a table or an iterable of record batches) atomically.

    ``metadata`` keys are written with the ``permtrace.`` prefix;
    ``schema_version`` is added.  Returns the path written.
    """
    path = Path(path)
    schema = SCHEMA.with_metadata(_meta_bytes(metadata or {}))
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(conform(batch).replace_schema_metadata(schema.metadata))
    return path


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    try:
        # pre_buffer=False: stream one row group at a time (pre-buffering holds
        # far more than a batch: ~160 MB for a 10M-event trace)
        return pq.ParquetFile(path, pre_buffer=False)
    except FileNotFoundError:
        raise TraceError("no such file", file=str(path),
                         hint="check the path") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise TraceError(f"not a readable Parquet trace ({e})", file=str(path),
                         hint="pass a file written by 'permtrace trace synth' or an importer") from None


def read_metadata(source: TraceSource) -> dict[str, str]:
    """The ``permtrace.*`` metadata of a trace, prefix stripped, values as strings."""
    raw = source.schema.metadata if isinstance(source, pa.Table) else _open(source).schema_arrow.metadata
    return {
        k.decode()[len(META_PREFIX):]: v.decode()
        for k, v in (raw or {}).items()
        if k.decode().startswith(META_PREFIX)
    }


def read_trace(path: str | os.PathLike) -> pa.Table:
    """Read a whole trace into memory (small traces, tests).  Conformed to SCHEMA."""
    table = _open(path).read()
    meta = table.schema.metadata
    return conform(table).replace_schema_metadata(meta)


def scan_trace(source: TraceSource, batch_size: int = 1 << 16) -> Iterator[pa.RecordBatch]:
    """Stream a trace as record batches conformed to SCHEMA (bounded memory)."""
    if isinstance(source, pa.Table):
        batches = source.to_batches(max_chunksize=batch_size)
    else:
        # one decoding thread: the reader's thread pool keeps more decoded row groups alive
        # (3M events: 187 vs 144 MB peak RSS) and the emulator consumes on one core anyway
        batches = _open(source).iter_batches(batch_size=batch_size, use_threads=False)
    for batch in batches:
        yield conform(batch)


def num_events(source: TraceSource) -> int:
    """Number of events, from the Parquet footer (no data read)."""
    if isinstance(source, pa.Table):
        return source.num_rows
    return _open(source).metadata.num_rows


def _np(col: pa.Array, dtype) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def iter_event_batches(source: TraceSource, batch_size: int = 1 << 16) -> Iterator[dict[str, np.ndarray]]:
    """Stream a trace as dicts of numpy columns: the emulator's only view of a trace.

    ``op`` is encoded as ``uint8`` per :data:`traces.schema.OP_CODE`;
    ``owner`` as ``int16`` index into :data:`traces.schema.OWNERS`
    (-1 for any other owner or none).  An unknown op raises TraceError.
    All other columns keep their schema dtype.  ``row`` is the 0-based
    row index of each event in the file.
    """
    start = 0
    for batch in scan_trace(source, batch_size):
        op = pc.index_in(batch.column("op"), value_set=_OPS_ARRAY)
        if op.null_count:
            bad = int(np.flatnonzero(op.is_null().to_numpy(zero_copy_only=False))[0])
            name = batch.column("op")[bad].as_py()
            raise TraceError(f"unknown op {name!r}", row=start + bad, column="op",
                             hint=f"ops are: {', '.join(OPS)}")
        owner = pc.fill_null(pc.index_in(batch.column("owner"), value_set=_OWNERS_ARRAY), -1)
        cols = {name: _np(batch.column(name), SCHEMA.field(name).type.to_pandas_dtype())
                for name in COLUMNS if name not in ("op", "owner")}
        cols["op"] = _np(op, np.uint8)
        cols["owner"] = _np(owner, np.int16)
        cols["row"] = np.arange(start, start + batch.num_rows, dtype=np.int64)
        start += batch.num_rows
        yield cols
