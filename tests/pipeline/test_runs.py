"""permtrace replay end to end: run specs, resume, crash safety, Dask identity (real emulator)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import runs, store
from pipeline.cli import main
from traces.errors import PermtraceError
from traces.io import read_trace, write_trace
from traces.synth import synthesize

POLICIES = ["legacy", "bpf_prog_pack"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> list[Path]:
    """Two small synthetic traces (a few hundred events each)."""
    d = tmp_path_factory.mktemp("traces")
    return [synthesize("boot-modules", d / "boot.parquet", seed=3),
            synthesize("tracing-session", d / "tracing.parquet", seed=3)]


def _table_bytes(out: Path, tables=("counters", "timeline", "directmap")) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for t in tables for p in sorted((out / t).rglob("*.parquet"))}


def test_expand_is_the_cross_product_with_stable_ids(traces, tmp_path):
    specs = runs.expand(traces, POLICIES, seeds=2, cpus=[2, 64])
    assert len(specs) == 2 * 2 * 2 * 2 == len({s.run_id for s in specs})
    # the id follows the trace's content, not its path
    moved = tmp_path / "elsewhere.parquet"
    shutil.copy(traces[0], moved)
    again = runs.expand([moved], POLICIES, seeds=2, cpus=[2, 64])
    assert [s.run_id for s in again] == [s.run_id for s in specs[:8]]
    # every parameter (defaults included) goes into the id
    first = specs[0]
    assert first.policy == "legacy" and first.seed == 0 and '"nr_cpus":2' in first.machine


def test_params_scope_and_validation(traces):
    assert runs.parse_params(["a=1", "legacy.b=2"], ["legacy", "x"]) == {"legacy": {"a": "1", "b": "2"}, "x": {"a": "1"}}
    with pytest.raises(PermtraceError, match="not among --policy"):
        runs.parse_params(["nope.a=1"], ["legacy"])
    with pytest.raises(PermtraceError, match="key=value"):
        runs.parse_params(["a"], ["legacy"])
    with pytest.raises(PermtraceError, match="unknown param"):
        runs.expand(traces, ["legacy"], ["no_such_param=1"])
    assert runs.parse_size("64G") == 64 << 30 and runs.parse_size("512MiB") == 512 << 20 and runs.parse_size("4096") == 4096


def test_replay_cli_runs_in_parallel_then_resumes_only_missing_runs(traces, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["replay", *map(str, traces), "--policy", "legacy", "--policy", "bpf_prog_pack",
            "--seeds", "2", "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    assert "8 runs replayed, 0 already complete" in capsys.readouterr().out
    before = _table_bytes(out)
    assert len(store.completed_run_ids(out)) == 8
    # GIVEN an interrupted batch: three runs lost their runs row (two of them all files), a temp file left over
    lost = sorted(store.completed_run_ids(out))[:3]
    for run_id in lost[:2]:
        for p in out.rglob(f"{run_id}.parquet"):
            p.unlink()
    next(out.rglob(f"{lost[2]}.parquet")).parent.joinpath(f".{lost[2]}.parquet.x.tmp").write_bytes(b"junk")
    for p in (out / "runs").rglob(f"{lost[2]}.parquet"):
        p.unlink()
    # WHEN the same command runs again THEN only those three replay, with the same bytes as before
    assert main(args) == 0
    assert "3 runs replayed, 5 already complete" in capsys.readouterr().out
    assert _table_bytes(out) == before


def test_a_crashing_run_leaves_no_partial_file_and_the_others_complete(traces, tmp_path):
    # GIVEN a trace whose row 5 has an op no kernel knows
    bad_table = read_trace(traces[1])
    ops = bad_table.column("op").to_pylist()
    ops[5] = "module_explode"
    bad = write_trace(tmp_path / "bad.parquet", bad_table.set_column(
        bad_table.schema.get_field_index("op"), "op", pa.array(ops, pa.string())))
    out = tmp_path / "results"
    # WHEN it is replayed beside a good trace THEN the error names the row, exit 2
    assert main(["replay", str(traces[0]), str(bad), "--policy", "legacy", "--out", str(out), "--jobs", "2"]) == 2
    good = runs.expand([traces[0]], ["legacy"])[0].run_id
    assert store.completed_run_ids(out) == {good}
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == [f"{good}.parquet"] * 4  # nothing of the failed run, no temp files


def test_dask_local_cluster_gives_byte_identical_tables(traces, tmp_path):
    distributed = pytest.importorskip("distributed")
    specs = runs.expand(traces, POLICIES, seeds=2)
    runs.run_all(specs, tmp_path / "local", jobs=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        assert main(["replay", *map(str, traces), "--policy", "legacy", "--policy", "bpf_prog_pack",
                     "--seeds", "2", "--out", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address]) == 0
    local, dask = _table_bytes(tmp_path / "local"), _table_bytes(tmp_path / "dask")
    assert len(local) == 3 * len(specs)
    # runs/ carries wall_s (not reproducible) and is left out of the comparison on purpose
    assert local == dask
