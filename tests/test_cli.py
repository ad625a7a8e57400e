"""Exit codes are decided in one place (pipeline.cli.main); pin them."""

from __future__ import annotations

import pytest

from pipeline.cli import EXIT_BAD_INPUT, EXIT_OK, main


def test_help_exits_0(capsys):
    # GIVEN the CLI WHEN asked for help THEN it lists every command group and exits 0
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for command in ("demo", "trace", "replay", "report", "compare", "policies", "bench", "check-model"):
        assert command in out


@pytest.mark.parametrize("argv", [["no-such-command"], ["replay"], ["trace", "synth", "no-such-scenario", "--out", "x.parquet"]])
def test_bad_usage_exits_2(argv, capsys):
    # GIVEN a wrong command line WHEN run THEN a message on stderr and exit 2, never a traceback
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_unreadable_trace_exits_2(tmp_path, capsys):
    # GIVEN a file that is not Parquet WHEN validated THEN exit 2 naming the file
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert main(["trace", "validate", str(bad)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "bad.parquet" in captured.out + captured.err
