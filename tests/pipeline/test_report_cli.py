"""permtrace report: files written, overwrite rules, the model-check section."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main


def test_report_writes_html_summary_and_images(dataset, tmp_path, capsys):
    png = tmp_path / "png"
    assert main(["report", str(dataset), "--png", str(png), "--cost", "per_ipi_ns=300"]) == 0
    out = capsys.readouterr().out
    assert "perm_alloc" in out and f"report: {dataset / 'report.html'}" in out
    assert (dataset / "summary.md").read_text().startswith("# permtrace report")
    assert "per_ipi_ns=300" in (dataset / "report.html").read_text()
    names = sorted(p.name for p in png.iterdir())
    assert "bars.png" in names and "bars.svg" in names and len(names) % 2 == 0
    assert (dataset / "report.html").stat().st_mode & 0o777 == 0o644


def test_report_never_overwrites_without_force(dataset):
    (dataset / "report.html").write_text("keep me")
    assert main(["report", str(dataset)]) == 2
    assert (dataset / "report.html").read_text() == "keep me"
    assert main(["report", str(dataset), "--force"]) == 0


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no completed runs" in capsys.readouterr().err


def test_report_includes_model_check_when_observations_sit_beside_a_trace(tmp_path):
    from pipeline import check_model
    from traces.schema import OBSERVED_SCHEMA
    from traces.synth import synthesize

    if not hasattr(check_model, "report_section"):
        pytest.skip("pipeline.check_model.report_section not there yet")
    trace = synthesize("boot-modules", tmp_path / "boot.parquet", seed=1)
    rows = {"ts_ns": [10**9], "kind": ["flush_tlb_all"], "value": [3], "op": ["module_load"], "event_row": [1]}
    pq.write_table(pa.Table.from_pydict({k: rows[k] for k in OBSERVED_SCHEMA.names}, schema=OBSERVED_SCHEMA),
                   tmp_path / "boot.observed.parquet")
    out = tmp_path / "r"
    assert main(["replay", str(trace), "--policy", "legacy", "--out", str(out), "--jobs", "1"]) == 0
    assert main(["report", str(out)]) == 0
    title, _ = check_model.report_section(out)
    assert f"<h2>{title}</h2>" in (out / "report.html").read_text()
