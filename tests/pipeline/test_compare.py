"""permtrace compare: the table, threshold rules, and the exit codes that gate CI."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.compare import Threshold, compare
from traces.errors import PermtraceError


@pytest.fixture
def two_sets(tmp_path, make):
    base = make.dataset(tmp_path / "base", {"legacy": [10, 10], "perm_alloc": [4, 4]})
    new = make.dataset(tmp_path / "new", {"legacy": [10, 10], "perm_alloc": [5, 5]})
    return base, new


def test_table_has_base_new_delta_ratio_per_metric(two_sets):
    base, new = two_sets
    t = compare(base, new)
    row = t.filter((pl.col("policy") == "perm_alloc") & (pl.col("metric") == "shootdowns")).row(0, named=True)
    assert (row["base"], row["new"], row["delta"], row["ratio"], row["change_pct"]) == (8.0, 10.0, 2.0, 1.25, 25.0)
    assert set(t["metric"]) >= {"shootdowns_per_load", "splits", "shootdown_cost_ms", "waste_peak_bytes"}


def test_one_policy_each_side_compares_them_directly(tmp_path, make):
    base = make.dataset(tmp_path / "b", {"legacy": [10]})
    new = make.dataset(tmp_path / "n", {"perm_alloc": [5]})
    t = compare(base, new)
    assert t["policy"].unique().to_list() == ["legacy -> perm_alloc"]


@pytest.mark.parametrize("rule, delta, pct, expected", [
    ("shootdowns_per_load>+5%", 1.0, 25.0, True),
    ("shootdowns_per_load>+5%", 0.1, 4.9, False),
    ("splits>0", 1.0, float("inf"), True),
    ("splits>0", 0.0, 0.0, False),
    ("waste_peak_bytes<-10%", -5.0, -20.0, True),
    ("shootdowns>=+25%", 2.0, 25.0, True),
])
def test_threshold_rules(rule, delta, pct, expected):
    assert Threshold.parse(rule).crossed(delta, pct) is expected


def test_bad_threshold_names_what_is_valid():
    with pytest.raises(PermtraceError, match="unknown metric 'shootdown'"):
        Threshold.parse("shootdown>5%")
    with pytest.raises(PermtraceError, match="METRIC OP VALUE"):
        Threshold.parse("shootdowns rises")


def test_cli_exits_1_when_a_threshold_is_crossed_and_0_otherwise(two_sets, capsys):
    base, new = map(str, two_sets)
    # perm_alloc shootdowns per load went up 25%
    assert main(["compare", base, new, "--fail-on", "shootdowns_per_load>+5%"]) == 1
    assert "FAIL: shootdowns_per_load>+5% crossed for perm_alloc" in capsys.readouterr().err
    assert main(["compare", base, new, "--fail-on", "shootdowns_per_load>+30%"]) == 0
    assert main(["compare", base, base, "--fail-on", "splits>0"]) == 0
    assert main(["compare", base, new, "--fail-on", "nonsense>1%"]) == 2
