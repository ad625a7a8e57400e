"""Imports point one way: traces <- emulator <- pipeline -> reports (architecture.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: package -> our packages it must never import
FORBIDDEN = {
    "traces": {"emulator", "pipeline", "reports"},
    "emulator": {"pipeline", "reports"},
    "reports": {"pipeline", "emulator", "traces"},
}


def _imported_tops(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downstream_layers(package):
    # GIVEN every module of the package WHEN its imports are read THEN none reaches a forbidden layer
    bad = {str(p.relative_to(REPO)): sorted(_imported_tops(p) & FORBIDDEN[package])
           for p in (REPO / package).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}
