"""The result dataset: one directory, four hive-partitioned Parquet tables.

Layout (architecture.md section 4, extended with the ``op`` column of
``counters`` and the ``directmap`` table)::

    <DIR>/runs/policy=<p>/<run_id>.parquet       one row per run: run_id, trace, trace_path,
                                                  trace_digest, policy, params (JSON), seed,
                                                  nr_cpus, mem_bytes, machine (JSON), n_events,
                                                  wall_s, version
    <DIR>/counters/policy=<p>/<run_id>.parquet   run_id, op, counter, value
                                                  (op null = whole-run total, else the total
                                                  caused by events of that op; counter
                                                  ``events`` = number of such events)
    <DIR>/timeline/policy=<p>/<run_id>.parquet   run_id, event_index, ts_ns, counter, value (sampled)
    <DIR>/directmap/policy=<p>/<run_id>.parquet  run_id, region (2 MiB index), level (0=4K, 1=2M, 2=1G)

Only ``runs`` carries wall time (``wall_s``) and the permtrace version;
``counters``, ``timeline`` and ``directmap`` are pure functions of the run
spec and are byte-identical however and wherever the run executed: rows
are sorted, schemas fixed, and the Parquet writer settings pinned.

Each file is written atomically (:func:`traces.io.atomic_path`); the
``runs`` file is written last, so its presence marks a complete run and an
interrupted batch resumes by skipping runs whose ``runs`` file exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emulator.result import ReplayResult
from traces.errors import PermtraceError
from traces.io import atomic_path

TABLES: tuple[str, ...] = ("runs", "counters", "timeline", "directmap")

RUNS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("trace", pa.string(), nullable=False),         # file name without .parquet
    pa.field("trace_path", pa.string(), nullable=False),
    pa.field("trace_digest", pa.string(), nullable=False),  # blake2b-128 of the file bytes
    pa.field("policy", pa.string(), nullable=False),        # as named on the command line (aliases kept)
    pa.field("params", pa.string(), nullable=False),        # JSON, every parameter incl. defaults
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("nr_cpus", pa.int64(), nullable=False),
    pa.field("mem_bytes", pa.int64(), nullable=False),
    pa.field("machine", pa.string(), nullable=False),       # JSON of dataclasses.asdict(Machine)
    pa.field("n_events", pa.int64(), nullable=False),
    pa.field("wall_s", pa.float64(), nullable=False),       # wall time of the replay (not reproducible)
    pa.field("version", pa.string(), nullable=False),       # permtrace version
])
COUNTERS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("op", pa.string(), nullable=True),
    pa.field("counter", pa.string(), nullable=False),
    pa.field("value", pa.int64(), nullable=False),
])
TIMELINE_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("event_index", pa.int64(), nullable=False),
    pa.field("ts_ns", pa.uint64(), nullable=False),
    pa.field("counter", pa.string(), nullable=False),
    pa.field("value", pa.int64(), nullable=False),
])
DIRECTMAP_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("region", pa.int64(), nullable=False),  # physical address >> 21
    pa.field("level", pa.uint8(), nullable=False),   # emulator.result.LEVEL_4K/2M/1G
])
SCHEMAS = {"runs": RUNS_SCHEMA, "counters": COUNTERS_SCHEMA,
           "timeline": TIMELINE_SCHEMA, "directmap": DIRECTMAP_SCHEMA}


def run_file(out: str | Path, table: str, policy: str, run_id: str) -> Path:
    """Where ``table``'s file of one run lives."""
    return Path(out) / table / f"policy={policy}" / f"{run_id}.parquet"


def is_complete(out: str | Path, policy: str, run_id: str) -> bool:
    """True when the run finished (its ``runs`` row, written last, exists)."""
    return run_file(out, "runs", policy, run_id).is_file()


def _write(path: Path, table: pa.Table) -> None:
    # Pinned writer settings: same rows -> same bytes (no pandas metadata,
    # no timestamps in the footer; pyarrow writes only its version string).
    with atomic_path(path) as tmp:
        tmp.chmod(0o644)  # mkstemp makes 0600; results are meant to be shared
        pq.write_table(table, tmp, compression="zstd", compression_level=3,
                       use_dictionary=True, write_statistics=True,
                       row_group_size=1 << 20, data_page_version="2.0")


def counters_table(run_id: str, result: ReplayResult) -> pa.Table:
    """Whole-run totals (op null) then per-op totals, sorted by (op, counter)."""
    rows = [(None, name, int(v)) for name, v in sorted(result.counters.items())]
    rows += [(op, name, int(v)) for op in sorted(result.per_op)
             for name, v in sorted(result.per_op[op].items())]
    return pa.table({
        "run_id": [run_id] * len(rows),
        "op": [r[0] for r in rows],
        "counter": [r[1] for r in rows],
        "value": [r[2] for r in rows],
    }, schema=COUNTERS_SCHEMA)


def timeline_table(run_id: str, result: ReplayResult) -> pa.Table:
    """Long format, sorted by (counter, event_index)."""
    tl = result.timeline
    index = np.asarray(tl["event_index"], dtype=np.int64)
    ts = np.asarray(tl["ts_ns"], dtype=np.uint64)
    names = sorted(k for k in tl if k not in ("event_index", "ts_ns"))
    order = np.argsort(index, kind="stable")
    index, ts, n = index[order], ts[order], len(index)
    return pa.table({
        "run_id": pa.array([run_id] * (n * len(names)), pa.string()),
        "event_index": np.tile(index, len(names)),
        "ts_ns": np.tile(ts, len(names)),
        "counter": pa.array([name for name in names for _ in range(n)], pa.string()),
        "value": (np.concatenate([np.asarray(tl[k], dtype=np.int64)[order] for k in names])
                  if names else np.zeros(0, np.int64)),
    }, schema=TIMELINE_SCHEMA)


def directmap_table(run_id: str, result: ReplayResult) -> pa.Table:
    """One row per 2 MiB region of physical memory, by region index."""
    levels = np.asarray(result.direct_map, dtype=np.uint8)
    return pa.table({
        "run_id": pa.array([run_id] * len(levels), pa.string()),
        "region": np.arange(len(levels), dtype=np.int64),
        "level": levels,
    }, schema=DIRECTMAP_SCHEMA)


def write_run(out: str | Path, run: dict, result: ReplayResult) -> None:
    """Write one run's four files; ``run`` is its ``runs`` row (see RUNS_SCHEMA).

    The ``runs`` file goes last: a crash before it leaves at most some
    complete (atomically written) files that a rerun overwrites with the
    same bytes, never a partial Parquet file.
    """
    run_id, policy = run["run_id"], run["policy"]
    _write(run_file(out, "directmap", policy, run_id), directmap_table(run_id, result))
    _write(run_file(out, "timeline", policy, run_id), timeline_table(run_id, result))
    _write(run_file(out, "counters", policy, run_id), counters_table(run_id, result))
    _write(run_file(out, "runs", policy, run_id),
           pa.Table.from_pylist([run], schema=RUNS_SCHEMA))


def completed_run_ids(out: str | Path) -> set[str]:
    """run_ids of every complete run in ``out``."""
    return {p.stem for p in (Path(out) / "runs").glob("policy=*/*.parquet")}


def scan(out: str | Path, table: str):
    """A lazy Polars frame over one table of the dataset (complete runs only).

    Files of runs that did not finish (no ``runs`` row) are left out, so a
    half-done batch never mixes into metrics.
    """
    import polars as pl

    out = Path(out)
    if table not in SCHEMAS:
        raise PermtraceError(f"unknown result table {table!r}; tables are {', '.join(TABLES)}")
    done = completed_run_ids(out)
    if not done:
        raise PermtraceError(f"{out}: no completed runs (no {out}/runs/policy=*/<run_id>.parquet); "
                             "fill it with: permtrace replay TRACE... --policy P --out DIR")
    files = sorted(str(p) for p in (out / table).glob("policy=*/*.parquet") if p.stem in done)
    schema = pl.Schema(pl.from_arrow(SCHEMAS[table].empty_table()).schema)
    if not files:
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet(files, hive_partitioning=False, schema=schema)
