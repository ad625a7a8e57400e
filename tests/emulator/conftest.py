"""Fixtures for emulator tests: tiny traces built in memory."""

from __future__ import annotations

import pyarrow as pa
import pytest

from traces.io import conform
from traces.schema import SECTION_COLUMNS


def build_trace(events: list[tuple], meta: dict[str, str] | None = None) -> pa.Table:
    """A trace from ``(op, id, size)`` tuples or dicts with more columns; ts = 1 ms apart."""
    rows = []
    for seq, ev in enumerate(events):
        d = dict(zip(("op", "id", "size"), ev)) if isinstance(ev, tuple) else dict(ev)
        row = {"seq": seq, "ts_ns": (seq + 1) * 1_000_000, "cpu": 0, "owner": None, "patch_sites": 0, "concurrent": 0,
               "size": 0, **{c: 0 for c in SECTION_COLUMNS}}
        row.update(d)
        rows.append(row)
    table = pa.Table.from_pylist(rows) if rows else None
    if table is None:
        from traces.schema import SCHEMA
        table = SCHEMA.empty_table()
    table = conform(table)
    if meta:
        table = table.replace_schema_metadata({f"permtrace.{k}".encode(): v.encode() for k, v in meta.items()})
    return table


def module(id: int, text=0, data=0, rodata=0, ro_after_init=0, init_text=0, init_data=0, init_rodata=0,
           patch_sites=0) -> dict:
    return {"op": "module_load", "id": id, "text_size": text, "data_size": data, "rodata_size": rodata,
            "ro_after_init_size": ro_after_init, "init_text_size": init_text, "init_data_size": init_data,
            "init_rodata_size": init_rodata, "patch_sites": patch_sites}


@pytest.fixture
def trace():
    return build_trace


@pytest.fixture
def mod():
    return module
