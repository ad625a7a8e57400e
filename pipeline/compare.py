"""``permtrace compare``: every metric of two result sets side by side, and CI gates.

Groups are matched by (policy, nr_cpus) when the two sets share policy
names (the same policies before and after a kernel patch); when each set
holds exactly one policy, those two are compared per CPU count
(``legacy -> perm_alloc``).  Values are means across seeds
(:func:`pipeline.metrics.summarize`).

A threshold ``METRIC OP VALUE[%]`` (OP one of ``> >= < <=``) is crossed
when the change from base to new satisfies it: with ``%`` the relative
change in percent (``shootdowns_per_load>+5%``), without it the absolute
change (``splits>0``).  A change from 0 to more is +inf %.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import metrics
from traces.errors import PermtraceError

_THRESHOLD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([+-]?\d+(?:\.\d+)?)\s*(%?)\s*$")


class ThresholdCrossed(PermtraceError):
    """A ``--fail-on`` threshold was crossed: exit code 1 (pipeline.cli)."""

    exit_code = 1


@dataclass(frozen=True)
class Threshold:
    """One ``--fail-on`` rule."""

    metric: str
    op: str
    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str) -> Threshold:
        m = _THRESHOLD.match(text)
        if not m:
            raise PermtraceError(f"--fail-on {text!r}: expected METRIC OP VALUE[%], e.g. 'shootdowns_per_load>+5%'")
        name, op, value, pct = m.groups()
        if name not in metrics.METRICS:
            raise PermtraceError(f"--fail-on {text!r}: unknown metric {name!r}; metrics are: "
                                 + ", ".join(metrics.METRICS))
        return cls(name, op, float(value), bool(pct))

    def crossed(self, delta: float | None, pct: float | None) -> bool:
        x = pct if self.percent else delta
        if x is None or math.isnan(x):
            return False
        return {">": x > self.value, ">=": x >= self.value, "<": x < self.value, "<=": x <= self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:+g}{'%' if self.percent else ''}"


def compare(base_dir: str | Path, new_dir: str | Path, cost: metrics.CostModel | None = None) -> pl.DataFrame:
    """One row per (group, metric): ``policy, nr_cpus, metric, base, new, delta, ratio, change_pct``."""
    base = metrics.summarize(metrics.per_run(base_dir, cost)).collect()
    new = metrics.summarize(metrics.per_run(new_dir, cost)).collect()
    bp, np_ = set(base["policy"]), set(new["policy"])
    if bp & np_:
        base, new = base.filter(pl.col("policy").is_in(list(np_))), new.filter(pl.col("policy").is_in(list(bp)))
    elif len(bp) == 1 and len(np_) == 1:
        label = f"{bp.pop()} -> {np_.pop()}"
        base, new = (f.with_columns(pl.lit(label).alias("policy")) for f in (base, new))
    else:
        raise PermtraceError(f"{base_dir} ({', '.join(sorted(bp))}) and {new_dir} ({', '.join(sorted(np_))}) "
                             "share no policy, and are not one policy each: nothing to compare")
    keys = ["policy", "nr_cpus", "metric"]
    joined = base.select(*keys, pl.col("mean").alias("base")).join(
        new.select(*keys, pl.col("mean").alias("new")), on=keys, how="inner", maintain_order="left",
        nulls_equal=True)
    if joined.is_empty():
        raise PermtraceError(f"{base_dir} and {new_dir} have no (policy, CPU count) in common")
    delta = pl.col("new") - pl.col("base")
    pct = (pl.when(pl.col("base") != 0).then(delta / pl.col("base").abs() * 100)
           .when(delta > 0).then(float("inf")).when(delta < 0).then(float("-inf"))
           .when(pl.col("base").is_not_null()).then(0.0))
    return joined.with_columns(delta.alias("delta"),
                               (pl.when(pl.col("base") != 0).then(pl.col("new") / pl.col("base"))).alias("ratio"),
                               pct.alias("change_pct"))


def crossed(table: pl.DataFrame, thresholds: list[Threshold]) -> list[str]:
    """Human-readable lines, one per (threshold, group) crossed; empty when all pass."""
    lines = []
    for t in thresholds:
        for row in table.filter(pl.col("metric") == t.metric).iter_rows(named=True):
            if t.crossed(row["delta"], row["change_pct"]):
                at = f" at {row['nr_cpus']} CPUs" if row["nr_cpus"] is not None else ""
                lines.append(f"{t} crossed for {row['policy']}{at}: "
                             f"{row['base']:.4g} -> {row['new']:.4g} ({row['change_pct']:+.1f}%)")
    return lines
