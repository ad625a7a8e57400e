"""permtrace demo: the main job, end to end on the real synthetic scenarios and emulator."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import store
from pipeline.cli import main
from pipeline.demo import SEEDS, builtin_policies
from traces.synth import scenarios

pytestmark = pytest.mark.slow


def test_demo_replays_every_scenario_policy_and_seed_and_writes_the_report(demo_dir):
    runs = store.scan(demo_dir, "runs").collect()
    assert runs.height == len(scenarios()) * len(builtin_policies()) * SEEDS
    assert set(runs["policy"]) == set(builtin_policies()) >= {"legacy", "bpf_prog_pack", "execmem_rox"}
    assert sorted(runs["trace"].unique()) == sorted(scenarios())
    page = (demo_dir / "report.html").read_text()
    assert 'id="bars"' in page and 'id="memory_map"' in page
    summary = (demo_dir / "summary.md").read_text()
    assert "| legacy |" in summary and "shootdowns vs legacy %" in summary


def test_demo_rerun_resumes_without_replaying(demo_dir, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (demo_dir / "counters").rglob("*.parquet")}
    assert main(["demo", "--out", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and "legacy" in out
    assert {p: p.stat().st_mtime_ns for p in (demo_dir / "counters").rglob("*.parquet")} == stamps


def test_demo_refuses_a_directory_holding_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_demo_headline_shows_the_expected_direction(demo_dir):
    # The seed RFC's claim, on the built-in workloads: every newer policy sends fewer
    # shootdowns per load than the 5.10 path.
    from pipeline import metrics
    s = metrics.summarize(metrics.per_run(demo_dir)).collect().filter(pl.col("metric") == "shootdowns_per_load")
    per = dict(s.select("policy", "mean").rows())
    assert all(per[p] < per["legacy"] for p in per if p != "legacy")
