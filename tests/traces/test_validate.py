"""traces.validate: every problem kind, found with its row and column."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traces.io import read_trace, write_trace
from traces.schema import SCHEMA
from traces.validate import Lifetimes, trace_summary, validate_trace

from .helpers import CORRUPTIONS, columns


def write(tmp_path, cols, name="t.parquet", schema=SCHEMA):
    path = tmp_path / name
    pq.write_table(pa.table(cols, schema=schema) if schema is not None else pa.table(cols), path)
    return path


def found(problems):
    return [(p.kind, p.row, p.column) for p in problems]


def test_valid_trace_has_no_problems(tmp_path):
    assert validate_trace(write(tmp_path, columns())) == []


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_found_with_row_and_column(tmp_path, name):
    mutate, expected = CORRUPTIONS[name]
    cols = columns()
    mutate(cols)
    assert found(validate_trace(write(tmp_path, cols))) == expected


def test_already_freed_is_told_apart_from_never_loaded(tmp_path):
    cols = columns()
    cols["id"][8] = 3  # exec_free of the vmalloc id freed at row 4: kinds are separate, so never loaded
    cols["op"][8] = "vfree"
    [p] = validate_trace(write(tmp_path, cols))
    assert "already freed at row 4" in p.what and p.row == 8


def test_every_problem_is_listed_in_row_order(tmp_path):
    cols = columns()
    cols["op"][6] = "bogus"
    cols["ts_ns"][9] = 0
    cols["size"][5] = 0
    problems = validate_trace(write(tmp_path, cols))
    assert found(problems) == [("zero_size", 5, "size"), ("unknown_op", 6, "op"), ("ts_backwards", 9, "ts_ns")]
    for p in problems:
        assert str(p).startswith(f"{tmp_path / 't.parquet'}, row {p.row}, column '{p.column}': ")
        assert "(fix: " in str(p)


def test_problems_across_batches_keep_file_rows(tmp_path):
    cols = columns()
    cols["ts_ns"][9] = 0
    # batch_size 4: row 9 is the second row of the third batch
    assert found(validate_trace(write(tmp_path, cols), batch_size=4)) == [("ts_backwards", 9, "ts_ns")]
    cols = columns()
    cols["seq"][4] = 3  # first row of the second batch repeats the last of the first
    assert found(validate_trace(write(tmp_path, cols), batch_size=4)) == [("seq_not_increasing", 4, "seq")]


def test_limit_per_kind_counts_all(tmp_path):
    n = 5000
    cols = {"seq": np.arange(n), "ts_ns": np.zeros(n, np.uint64), "cpu": np.zeros(n, np.uint16),
            "op": ["vfree"] * n, "id": np.arange(n), "size": np.zeros(n, np.uint64)}
    problems = validate_trace(write(tmp_path, cols, schema=None), limit_per_kind=10)
    assert [p.row for p in problems[:10]] == list(range(10))
    assert problems[10].row is None and "4990 more rows" in problems[10].what and "5000 in all" in problems[10].what
    assert len(validate_trace(write(tmp_path, cols, schema=None), limit_per_kind=None)) == n


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("seq,ts_ns,op\n0,0,vmalloc\n")
    [p] = validate_trace(path)
    assert p.kind == "not_parquet" and p.row is None and "not a Parquet file" in p.what


def test_empty_file_is_not_parquet(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"")
    assert found(validate_trace(tmp_path / "t.parquet")) == [("not_parquet", None, None)]


def test_truncated_file(tmp_path):
    path = write(tmp_path, columns())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    [p] = validate_trace(path)
    assert p.kind == "truncated" and "truncated" in p.what


def test_missing_file(tmp_path):
    assert found(validate_trace(tmp_path / "nope.parquet")) == [("not_found", None, None)]


def test_missing_and_mistyped_columns(tmp_path):
    cols = columns()
    del cols["ts_ns"]
    cols["size"] = [float(x) for x in cols["size"]]
    problems = validate_trace(write(tmp_path, cols, schema=None))
    assert found(problems) == [("missing_column", None, "ts_ns"), ("mistyped_column", None, "size")]
    assert "expected uint64" in problems[1].what


def test_optional_columns_may_be_missing(tmp_path):
    cols = columns()
    for c in ("owner", "patch_sites", "ro_after_init_size"):
        del cols[c]
    assert validate_trace(write(tmp_path, cols, schema=None)) == []


def test_nulls_and_negative_values(tmp_path):
    cols = columns()
    cols["cpu"][2] = None
    cols["id"] = [-x if i == 3 else x for i, x in enumerate(cols["id"])]
    problems = validate_trace(write(tmp_path, {k: pa.array(v) for k, v in cols.items()}, schema=None))
    assert ("null_value", 2, "cpu") in found(problems)
    assert ("negative_value", 3, "id") in found(problems)


def test_dictionary_encoded_ops_are_accepted(tmp_path):
    table = read_trace(write(tmp_path, columns()))
    i = table.schema.get_field_index("op")
    table = table.set_column(i, "op", table.column("op").dictionary_encode())
    pq.write_table(table, tmp_path / "d.parquet")
    assert validate_trace(tmp_path / "d.parquet") == []


def test_corrupted_copy_of_a_synthetic_trace(tmp_path):
    """A copy of a real synthetic trace with an unknown op and a double free deep inside."""
    from traces.synth import synthesize
    good = synthesize("seccomp-storm", tmp_path / "good.parquet", seed=3, duration="60s")
    table = read_trace(good)
    ops = table.column("op").to_pylist()
    frees = [i for i, op in enumerate(ops) if op == "bpf_prog_free"]
    row = frees[len(frees) // 2]
    ops[row - 1] = "bpf_prog_unload"
    bad = table.set_column(table.schema.get_field_index("op"), "op", pa.array(ops))
    ids = bad.column("id").to_pylist()
    ids.append(ids[row])  # free the same program again at the end
    extra = bad.slice(row, 1).to_pylist()[0] | {"seq": len(ops), "ts_ns": bad.column("ts_ns")[-1].as_py()}
    bad = pa.concat_tables([bad, pa.Table.from_pylist([extra], schema=bad.schema)])
    write_trace(tmp_path / "bad.parquet", bad)
    assert validate_trace(good) == []
    got = found(validate_trace(tmp_path / "bad.parquet"))
    assert ("unknown_op", row - 1, "op") in got and ("free_not_live", len(ops), "id") in got


def test_summary_counts_bytes_and_live_objects(tmp_path):
    cols = columns()
    keep = 8  # cut before exec_free, bpf_prog_free, module_unload: those three stay live
    s = trace_summary(write(tmp_path, {k: v[:keep] for k, v in cols.items()}))
    assert s.n_events == keep and (s.first_ts_ns, s.last_ts_ns) == (0, 7000)
    assert s.per_op["module_load"] == (1, 16384, 2)
    assert s.per_op["text_patch"] == (1, 0, 3)
    assert s.per_op["mem_pressure"] == (1, 1 << 20, 0)
    # the module's init text was freed: 12288 of its 16384 bytes remain
    assert s.live == {"module_load": (1, 12288), "bpf_prog_load": (1, 300), "exec_alloc": (1, 400),
                      "vmalloc": (0, 0)}
    assert trace_summary(write(tmp_path, cols)).live == {k: (0, 0) for k in s.live}


def test_lifetimes_module_init_free_only_once():
    seen = []
    life = Lifetimes(lambda kind, what, fix, row, column: seen.append((kind, row)))
    from traces.schema import OP_CODE
    ops = np.array([OP_CODE[o] for o in ("module_load", "module_init_free", "module_init_free")])
    life.feed(np.arange(3), ops, np.array([5, 5, 5]), np.array([100, 0, 0]), np.array([40, 0, 0]))
    assert seen == [("free_not_live", 2)] and life.live[0] == {5: [0, 60, 0]}


def test_lifetimes_module_init_once_per_load_of_a_live_module():
    # GIVEN module 5 loaded, inited twice, then an init of never-loaded module 6
    seen = []
    life = Lifetimes(lambda kind, what, fix, row, column: seen.append((kind, row)))
    from traces.schema import OP_CODE
    ops = np.array([OP_CODE[o] for o in ("module_load", "module_init", "module_init", "module_init",
                                         "module_unload", "module_load", "module_init")])
    # WHEN fed THEN the second init and the init of the unknown id are problems; a reload may init again
    life.feed(np.arange(7), ops, np.array([5, 5, 5, 6, 5, 5, 5]), np.full(7, 100), np.zeros(7, np.int64))
    assert seen == [("load_live", 2), ("free_not_live", 3)]
