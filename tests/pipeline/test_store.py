"""The result dataset: layout, fixed schemas, byte-identical rewrites, no partial files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import store
from traces.errors import PermtraceError


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_write_run_lays_out_four_tables_with_fixed_schemas(tmp_path, make):
    # GIVEN one replay result WHEN written THEN each table has one file under policy=<p>/<run_id>.parquet
    store.write_run(tmp_path, make.row("r1", "legacy"), make.result())
    for table, schema in store.SCHEMAS.items():
        path = tmp_path / table / "policy=legacy" / "r1.parquet"
        assert pq.read_schema(path).remove_metadata() == schema
    assert store.is_complete(tmp_path, "legacy", "r1")
    assert store.completed_run_ids(tmp_path) == {"r1"}


def test_counters_hold_totals_then_per_op_rows_sorted(tmp_path, make):
    result = make.result(shootdowns=10, module_loads=4)
    store.write_run(tmp_path, make.row("r1", "legacy"), result)
    c = pl.read_parquet(tmp_path / "counters" / "policy=legacy" / "r1.parquet")
    totals = c.filter(pl.col("op").is_null())
    assert totals["counter"].to_list() == sorted(result.counters)
    assert totals.filter(pl.col("counter") == "emu_shootdowns")["value"].item() == 10
    per_op = c.filter(pl.col("op").is_not_null())
    assert per_op.select("op", "counter").rows() == sorted(per_op.select("op", "counter").rows())
    assert per_op.filter((pl.col("op") == "module_load") & (pl.col("counter") == "events"))["value"].item() == 4


def test_timeline_long_format_and_directmap_one_row_per_region(tmp_path, make):
    result = make.result(splits=3, regions=64)
    store.write_run(tmp_path, make.row("r1", "legacy"), result)
    tl = pl.read_parquet(tmp_path / "timeline" / "policy=legacy" / "r1.parquet")
    names = sorted(k for k in result.timeline if k not in ("event_index", "ts_ns"))
    assert tl["counter"].unique(maintain_order=True).to_list() == names
    assert tl.height == 8 * len(names)
    dm = pl.read_parquet(tmp_path / "directmap" / "policy=legacy" / "r1.parquet")
    assert dm["region"].to_list() == list(range(64))
    assert (dm["level"] == 0).sum() == 3


def test_same_result_rewritten_gives_byte_identical_tables_except_runs(tmp_path, make):
    # GIVEN the same result written twice with different wall times
    # THEN counters/timeline/directmap bytes are identical (runs carries wall_s, so it may differ)
    a, b = tmp_path / "a", tmp_path / "b"
    store.write_run(a, make.row("r1", "legacy") | {"wall_s": 1.0}, make.result())
    store.write_run(b, make.row("r1", "legacy") | {"wall_s": 2.0}, make.result())
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        if not name.startswith("runs/"):
            assert fa[name] == fb[name], name


def test_crash_while_writing_leaves_no_partial_parquet_and_run_incomplete(tmp_path, make, monkeypatch):
    # GIVEN the writer dies while writing the counters file (after writing some bytes)
    real = pq.write_table
    calls = []

    def dying(table, where, **kw):
        calls.append(where)
        if len(calls) == 3:
            Path(where).write_bytes(b"PAR1 half a file")
            raise OSError("disk full")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", dying)
    with pytest.raises(OSError):
        store.write_run(tmp_path, make.row("r1", "legacy"), make.result())
    # THEN no temporary or partial file remains, the run is not complete, and scans ignore it
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["r1.parquet", "r1.parquet"]  # directmap and timeline, both whole
    for p in tmp_path.rglob("*.parquet"):
        pq.read_table(p)
    assert not store.is_complete(tmp_path, "legacy", "r1")
    with pytest.raises(PermtraceError, match="no completed runs"):
        store.scan(tmp_path, "counters")


def test_scan_reads_only_complete_runs(tmp_path, make):
    store.write_run(tmp_path, make.row("r1", "legacy"), make.result())
    store.write_run(tmp_path, make.row("r2", "perm_alloc"), make.result())
    (tmp_path / "runs" / "policy=perm_alloc" / "r2.parquet").unlink()  # as if r2 died before its runs row
    assert store.scan(tmp_path, "counters").select("run_id").unique().collect()["run_id"].to_list() == ["r1"]
