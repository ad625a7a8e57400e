"""permtrace trace synth / info / validate: output and exit codes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pyarrow as pa
import pytest

from pipeline.cli import main
from traces.schema import SCHEMA

from .helpers import CORRUPTIONS, columns


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_list_describes_each_scenario_in_one_line(capsys):
    code, out, _ = run(capsys, "trace", "synth", "--list")
    lines = out.strip().splitlines()
    assert code == 0 and [line.split()[0] for line in lines] == [
        "boot-modules", "bpf-churn", "mixed-fleet", "seccomp-storm", "tracing-session"]
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines)


def test_synth_then_validate_then_info(tmp_path, capsys):
    out_file = tmp_path / "t.parquet"
    code, out, _ = run(capsys, "trace", "synth", "bpf-churn", "--seed", "3", "--out", str(out_file),
                       "--events", "2000", "--cpus", "4", "--mem", "8G", "--duration", "30m")
    assert code == 0 and "2000 events" in out
    code, out, _ = run(capsys, "trace", "validate", str(out_file))
    assert code == 0 and "valid" in out
    code, out, _ = run(capsys, "trace", "info", str(out_file))
    assert code == 0
    for text in ("source      synthetic:bpf-churn:seed=3", "nr_cpus     4", "DirectMap1G", "time span",
                 "bpf_prog_load", "live at end", "events      2000"):
        assert text in out


def test_validate_lists_problems_and_exits_2(tmp_path, capsys):
    cols = columns()
    cols["op"][6] = "bogus"
    cols["id"][4] = 42
    pq.write_table(pa.table(cols, schema=SCHEMA), tmp_path / "bad.parquet")
    code, out, err = run(capsys, "trace", "validate", str(tmp_path / "bad.parquet"))
    assert code == 2
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'bad.parquet'}, row 4, column 'id': vfree of id 42")
    assert lines[1].startswith(f"{tmp_path / 'bad.parquet'}, row 6, column 'op': unknown op 'bogus'")
    assert "(fix: ops are: module_load" in lines[1]
    assert "INVALID" in err and "0-based" in err


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_validate_names_row_and_column_of_each_problem_kind(tmp_path, capsys, name):
    mutate, expected = CORRUPTIONS[name]
    cols = columns()
    mutate(cols)
    pq.write_table(pa.table(cols, schema=SCHEMA), tmp_path / "bad.parquet")
    code, out, _ = run(capsys, "trace", "validate", str(tmp_path / "bad.parquet"))
    assert code == 2
    for _, row, column in expected:
        assert f"{tmp_path / 'bad.parquet'}, row {row}, column '{column}': " in out


@pytest.mark.parametrize("content", [b"", b"not parquet at all", b"PAR1 cut short"])
def test_validate_broken_files_exit_2_without_traceback(tmp_path, capsys, content):
    (tmp_path / "x.parquet").write_bytes(content)
    code, out, err = run(capsys, "trace", "validate", str(tmp_path / "x.parquet"))
    assert code == 2 and "Traceback" not in out + err
    assert ("not a Parquet file" in out) or ("truncated" in out)


def test_info_of_a_broken_file_exits_2(tmp_path, capsys):
    (tmp_path / "x.parquet").write_bytes(b"nope")
    code, _, err = run(capsys, "trace", "info", str(tmp_path / "x.parquet"))
    assert code == 2 and "not a readable Parquet trace" in err


@pytest.mark.parametrize("argv", [
    ("trace", "synth", "no-such-scenario", "--out", "x.parquet"),
    ("trace", "synth", "bpf-churn"),
    ("trace", "synth", "bpf-churn", "--out", "x.parquet", "--mem", "lots"),
    ("trace", "synth", "bpf-churn", "--out", "x.parquet", "--cpus", "0"),
])
def test_synth_bad_usage_exits_2(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "error" in err
    assert not (tmp_path / "x.parquet").exists()
