"""The README's two opening commands are the project's contract with a new user
and with CI: pin their shape, and that .ci/run runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _opening_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_demo_then_tests():
    # GIVEN the README WHEN its first code block is read THEN it holds exactly
    # the demo command and the test command, in that order
    first, second = _opening_commands()
    assert first.endswith("permtrace demo")
    assert "pip install '.[test]'" in second and second.endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    _, test_command = _opening_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]
