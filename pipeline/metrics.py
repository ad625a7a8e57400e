"""Metrics over a result dataset: named Polars expressions, lazy to the end.

Three stages, each a lazy frame:

1. :func:`per_run` - one row per run: the additive base counters
   (:data:`BASE`, whole-run and per-op totals) plus the estimated CPU time
   lost to shootdowns (:class:`CostModel`).
2. :func:`summarize` - runs summed per seed over the traces of a group
   (``policy``, and ``nr_cpus`` in a CPU sweep: each trace is one machine of
   a fleet, so counters, direct-map sizes and waste add up), the derived
   ratios of :data:`DERIVED` computed on those sums, then mean, standard
   deviation and a 95% Student-t interval across seeds.
3. :func:`headline` - the summary against a baseline policy, in percent.

Every metric is a named expression (``shootdowns_per_load`` ...); the names
are what ``permtrace compare --fail-on`` accepts.  No ``map_elements``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path

import polars as pl

from emulator.result import WASTE_CAUSES
from pipeline import store
from traces.errors import PermtraceError

#: Ops that load executable code, and the metric suffix naming them.
LOAD_OPS: dict[str, str] = {"module_load": "module_load", "bpf_prog_load": "bpf_load",
                            "exec_alloc": "exec_alloc"}
#: A module load is load_module (``module_load``) and do_init_module (``module_init``).
LOAD_PHASES: dict[str, tuple[str, ...]] = {"module_load": ("module_load", "module_init")}


def counter(name: str, op: str | None = None) -> pl.Expr:
    """Sum of a counter over the counters table's rows (whole run when ``op`` is None)."""
    where = pl.col("op").is_null() if op is None else pl.col("op") == op
    return pl.col("value").filter(where & (pl.col("counter") == name)).sum()


def _base() -> dict[str, pl.Expr]:
    m = {
        "shootdowns": counter("emu_shootdowns"),              # all-CPU flush rounds of any kind
        "shootdown_ipis": counter("emu_shootdown_ipis"),      # rounds x (nr_cpus - 1)
        "flush_tlb_all": counter("emu_flush_tlb_all"),        # full flushes
        "flush_tlb_kernel_range": counter("emu_flush_tlb_kernel_range"),  # ranged flushes
        "cpa_flush": counter("emu_cpa_flush"),                # CPA per-page flushes (__cpa_flush_tlb)
        "local_flush": counter("emu_local_flush"),            # text_poke: this CPU only, no IPI
        "sync_core_ipis": counter("emu_sync_core_ipis"),      # do_sync_core IPIs (3 rounds x (nr_cpus - 1) per batch)
        "text_poke_bp_batches": counter("emu_text_poke_bp_batches"),
        "vmap_purges": counter("emu_vmap_purges"),
        "level2_splits": counter("direct_map_level2_splits"),
        "level3_splits": counter("direct_map_level3_splits"),
        "level2_collapses": counter("direct_map_level2_collapses"),
        "level3_collapses": counter("direct_map_level3_collapses"),
        "directmap_4k_kb": counter("DirectMap4k"),
        "directmap_2m_kb": counter("DirectMap2M"),
        "directmap_1g_kb": counter("DirectMap1G"),
        "text_tlb_entries_4k": counter("emu_text_tlb_entries_4k"),
        "text_tlb_entries_2m": counter("emu_text_tlb_entries_2m"),
    }
    for kind, prefix in (("end", "emu_waste_bytes"), ("peak", "emu_waste_peak_bytes"),
                         ("mean", "emu_waste_mean_bytes")):
        m[f"waste_{kind}_bytes"] = counter(prefix)
        for cause in WASTE_CAUSES:
            m[f"waste_{kind}_bytes_{cause}"] = counter(f"{prefix}_{cause}")
    for op, suffix in LOAD_OPS.items():
        phases = LOAD_PHASES.get(op, (op,))
        m[f"{suffix}s"] = counter("events", op)
        m[f"shootdowns_{suffix}"] = reduce(add, (counter("emu_shootdowns", p) for p in phases))
        m[f"shootdown_ipis_{suffix}"] = reduce(add, (counter("emu_shootdown_ipis", p) for p in phases))
    return {name: e.alias(name) for name, e in m.items()}


#: Additive per-run metrics: name -> expression over the counters table.
BASE: dict[str, pl.Expr] = _base()


@dataclass(frozen=True)
class CostModel:
    """CPU time lost to TLB shootdowns, in ns (an estimate; every figure overridable).

    Per run::

        cost = (shootdowns + 3 * text_poke_bp_batches)    initiator: send IPIs, wait for acks
                 * round_ns                               (text_poke_bp: 3 text_poke_sync rounds a batch)
             + (shootdown_ipis + sync_core_ipis)          each receiver: interrupt, handler, ack
                 * per_ipi_ns
             + (flush_tlb_kernel_range + cpa_flush)
                 * nr_cpus * flush_pages * invlpg_ns      INVLPG per page on every CPU
             + flush_tlb_all * nr_cpus * refill_ns        TLB refill after a full flush

    Sources (kernel-reference.md section 9.1):

    - ``invlpg_ns = 100``: arch/x86/mm/tlb.c, comment above
      ``tlb_single_page_flush_ceiling``: a single-page flush is "about
      100 ns", so the 33-page ceiling caps a ranged flush at "about 3,000 ns".
    - ``round_ns = 1000`` and ``per_ipi_ns = 200``: third-party rule of
      thumb, "base about 1 us + about 200 ns per receiver" (1.6 us at 4
      CPUs, 14 us at 64); consistent with Amit (ATC'17, "TLB shootdown can
      take microseconds") and "about 1-3 us per IPI round trip".  Unverified
      against a primary source: override for your machine.
    - ``flush_pages = 33``: the counters do not record how many pages a
      ranged or per-page flush covered; both are at most
      ``tlb_single_page_flush_ceiling`` (33) pages, so this is an upper bound.
    - ``refill_ns = 2000``: no published figure.  Our estimate: after
      ``flush_tlb_all`` each CPU re-walks its hot kernel and user translations,
      ~64 entries x ~30 ns per page walk hitting the caches.  Override it.
    """

    round_ns: float = 1000.0
    per_ipi_ns: float = 200.0
    invlpg_ns: float = 100.0
    flush_pages: float = 33.0
    refill_ns: float = 2000.0

    @classmethod
    def from_pairs(cls, pairs: list[str] | tuple[str, ...]) -> CostModel:
        """``["per_ipi_ns=300", ...]`` (from ``--cost``) -> a model with those overrides."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in fields:
                raise PermtraceError(f"--cost {pair!r}: expected one of {', '.join(sorted(fields))}=NUMBER")
            try:
                values[key] = float(value)
            except ValueError:
                raise PermtraceError(f"--cost {pair!r}: {value!r} is not a number") from None
        return cls(**values)

    def expr(self) -> pl.Expr:
        """``shootdown_cost_ns`` of one run, from its base counters and ``nr_cpus``."""
        cpus = pl.col("nr_cpus")
        return ((pl.col("shootdowns") + 3 * pl.col("text_poke_bp_batches")) * self.round_ns
                + (pl.col("shootdown_ipis") + pl.col("sync_core_ipis")) * self.per_ipi_ns
                + (pl.col("flush_tlb_kernel_range") + pl.col("cpa_flush")) * cpus * (self.flush_pages * self.invlpg_ns)
                + pl.col("flush_tlb_all") * cpus * self.refill_ns
                ).cast(pl.Float64).alias("shootdown_cost_ns")


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null when den is 0 (no such loads: no figure, not zero)."""
    return pl.when(den > 0).then(num / den).otherwise(None)


def _derived() -> dict[str, pl.Expr]:
    loads = pl.sum_horizontal(pl.col(f"{s}s") for s in LOAD_OPS.values())
    m = {
        "ipis": pl.col("shootdown_ipis") + pl.col("sync_core_ipis"),  # every IPI sent, flush or sync-core
        "splits": pl.col("level2_splits") + pl.col("level3_splits"),
        "collapses": pl.col("level2_collapses") + pl.col("level3_collapses"),
        "loads": loads,
        "shootdowns_per_load": _ratio(pl.sum_horizontal(pl.col(f"shootdowns_{s}") for s in LOAD_OPS.values()), loads),
        "shootdown_ipis_per_load": _ratio(
            pl.sum_horizontal(pl.col(f"shootdown_ipis_{s}") for s in LOAD_OPS.values()), loads),
        "splits_per_load": _ratio(pl.col("level2_splits") + pl.col("level3_splits"), loads),
        "waste_mean_mib": pl.col("waste_mean_bytes") / (1 << 20),
        "waste_peak_mib": pl.col("waste_peak_bytes") / (1 << 20),
        "shootdown_cost_ms": pl.col("shootdown_cost_ns") / 1e6,
        "shootdown_cost_us_per_load": _ratio(pl.col("shootdown_cost_ns") / 1e3, loads),
    }
    for s in LOAD_OPS.values():
        m[f"shootdowns_per_{s}"] = _ratio(pl.col(f"shootdowns_{s}"), pl.col(f"{s}s"))
        m[f"shootdown_ipis_per_{s}"] = _ratio(pl.col(f"shootdown_ipis_{s}"), pl.col(f"{s}s"))
    return {name: e.alias(name) for name, e in m.items()}


#: Ratios and sums computed after summing a group's base counters.
DERIVED: dict[str, pl.Expr] = _derived()

#: Every metric name, in report order (what ``compare`` lists).
METRICS: tuple[str, ...] = (*BASE, "shootdown_cost_ns", *DERIVED)

#: Two-sided 95% Student-t quantiles by degrees of freedom (t_{0.975, df});
#: beyond 30 the normal 1.96 is used.
T975: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}


def runs(out: str | Path) -> pl.LazyFrame:
    """The runs table, with ``policy`` made a unique label per parameter set.

    When one policy name appears with several parameter sets, each becomes
    ``name {params JSON}`` so they are not averaged together.
    """
    label = (pl.when(pl.col("params").n_unique().over("policy") > 1)
             .then(pl.col("policy") + " " + pl.col("params"))
             .otherwise(pl.col("policy")))
    return store.scan(out, "runs").with_columns(label.alias("policy"))


def per_run(out: str | Path, cost: CostModel | None = None) -> pl.LazyFrame:
    """One row per run: run identity, :data:`BASE` counters and ``shootdown_cost_ns``."""
    counters = store.scan(out, "counters").group_by("run_id").agg(*BASE.values())
    return (runs(out).select("run_id", "trace", "policy", "params", "seed", "nr_cpus", "mem_bytes", "n_events")
            .join(counters, on="run_id", how="left")
            .with_columns((cost or CostModel()).expr())
            .sort("policy", "nr_cpus", "trace", "seed"))


def is_sweep(frame: pl.LazyFrame) -> bool:
    """True when some trace was replayed at more than one CPU count (``--cpus 2,64,256``)."""
    return bool(frame.group_by("trace").agg(pl.col("nr_cpus").n_unique()).select(pl.col("nr_cpus").max() > 1)
                .collect().item())


def summarize(frame: pl.LazyFrame, by: tuple[str, ...] | None = None) -> pl.LazyFrame:
    """Mean and 95% interval across seeds of every metric, per ``by`` group.

    ``by`` defaults to ``policy`` x ``nr_cpus`` for a CPU sweep, else to
    ``policy`` alone (each trace keeps its own machine; ``nr_cpus`` is then
    null in the output).  Long format: ``policy, nr_cpus, metric, mean, std,
    n, lo, hi`` (``lo``/``hi`` = mean -/+ t_{0.975,n-1} * std / sqrt(n);
    equal to the mean when n = 1).
    """
    if by is None:
        by = ("policy", "nr_cpus") if is_sweep(frame) else ("policy",)
    additive = [*BASE, "shootdown_cost_ns"]
    fleet = (frame.group_by(*by, "seed").agg(pl.col(additive).sum())
             .with_columns(*DERIVED.values()))
    t = (pl.col("n") - 1).replace_strict(T975, default=1.96, return_dtype=pl.Float64)
    half = pl.when(pl.col("n") > 1).then(t * pl.col("std") / pl.col("n").sqrt()).otherwise(0.0)
    order = pl.Enum(list(METRICS))
    out = (fleet.unpivot(index=[*by, "seed"], on=list(METRICS), variable_name="metric")
           .with_columns(pl.col("value").cast(pl.Float64), pl.col("metric").cast(order))
           .group_by(*by, "metric")
           .agg(pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"),
                pl.col("value").count().alias("n"))
           .with_columns((pl.col("mean") - half).alias("lo"), (pl.col("mean") + half).alias("hi"))
           .sort(*by, "metric")
           .with_columns(pl.col("metric").cast(pl.String)))
    if "nr_cpus" not in by:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("nr_cpus"))
    return out.select("policy", "nr_cpus", "metric", "mean", "std", "n", "lo", "hi")


#: Headline columns: (metric, column title).
HEADLINE: tuple[tuple[str, str], ...] = (
    ("shootdowns", "shootdowns"),
    ("shootdowns_per_load", "shootdowns/load"),
    ("splits", "direct-map splits"),
    ("waste_mean_mib", "waste (MiB, mean)"),
    ("shootdown_cost_ms", "est. cost (ms CPU)"),
)


def pick_baseline(policies: list[str], baseline: str | None = None) -> str:
    """``baseline`` if given (must exist), else ``legacy``/``linux-5.10``, else the first."""
    if baseline is not None:
        if baseline not in policies:
            raise PermtraceError(f"--baseline {baseline!r} is not among the results' policies: {', '.join(policies)}")
        return baseline
    for name in ("legacy", "linux-5.10"):
        if name in policies:
            return name
    return sorted(policies)[0]


def headline(summary: pl.DataFrame, baseline: str) -> pl.DataFrame:
    """Per policy (and CPU count, when several): each headline metric's mean and change vs ``baseline`` in percent."""
    keys = ["policy"] + (["nr_cpus"] if summary["nr_cpus"].n_unique() > 1 else [])
    metrics = [m for m, _ in HEADLINE]
    s = summary.filter(pl.col("metric").is_in(metrics))
    base = (s.filter(pl.col("policy") == baseline)
            .select(*[k for k in keys if k != "policy"], "metric", pl.col("mean").alias("base")))
    joined = s.join(base, on=[k for k in keys if k != "policy"] + ["metric"], how="left")
    pct = pl.when(pl.col("base") != 0).then((pl.col("mean") / pl.col("base") - 1) * 100).otherwise(None)
    wide = (joined.with_columns(pct.alias("pct"))
            .pivot(on="metric", index=keys, values=["mean", "pct"], aggregate_function="first"))
    cols = [pl.col(k) for k in keys]
    for m, title in HEADLINE:
        cols += [pl.col(f"mean_{m}").alias(title), pl.col(f"pct_{m}").alias(f"{title} vs {baseline} %")]
    return wide.select(cols).sort(pl.col("policy") != baseline, *keys)


def per_op(out: str | Path) -> pl.LazyFrame:
    """Per run and op: events and shootdowns, IPIs, splits per event (the per-op distributions)."""
    c = store.scan(out, "counters").filter(pl.col("op").is_not_null())
    events = c.filter(pl.col("counter") == "events").select("run_id", "op", pl.col("value").alias("events"))
    wanted = {"emu_shootdowns": "shootdowns", "emu_shootdown_ipis": "shootdown_ipis",
              "direct_map_level2_splits": "level2_splits", "emu_sync_core_ipis": "sync_core_ipis"}
    totals = (c.filter(pl.col("counter").is_in(list(wanted)))
              .group_by("run_id", "op")
              .agg(*(pl.col("value").filter(pl.col("counter") == k).sum().alias(v) for k, v in wanted.items())))
    return (events.join(totals, on=["run_id", "op"], how="left").fill_null(0)
            .filter(pl.col("events") > 0)
            .with_columns(*((pl.col(v) / pl.col("events")).alias(f"{v}_per_event") for v in wanted.values()))
            .join(runs(out).select("run_id", "policy", "trace", "seed", "nr_cpus"), on="run_id")
            .sort("policy", "op", "trace", "seed"))


def timeline(out: str | Path, counters: list[str]) -> pl.LazyFrame:
    """Sampled ``counters`` per (policy, nr_cpus, trace, event_index), mean over seeds.

    Runs of one trace sample at the same event indices, so seeds align.
    """
    tl = store.scan(out, "timeline").filter(pl.col("counter").is_in(counters))
    return (tl.join(runs(out).select("run_id", "policy", "trace", "nr_cpus"), on="run_id")
            .group_by("policy", "nr_cpus", "trace", "counter", "event_index")
            .agg(pl.col("ts_ns").first(), pl.col("value").mean())
            .sort("policy", "nr_cpus", "trace", "counter", "event_index"))


def directmap_timeline(out: str | Path) -> pl.LazyFrame:
    """``DirectMap4k/2M/1G`` (kB) over time, like :func:`timeline`.

    Sampled values are used when the timeline has all three.  The emulator
    samples only ``DirectMap4k`` and ``direct_map_level3_splits``; then the
    other two are reconstructed exactly from those and the final counters,
    since the direct map's size is constant and only a level-3 split moves
    memory out of 1G pages: ``1G(t) = 1G(end) + (L3 splits(end) - L3 splits(t))
    x 1 GiB``, ``2M(t) = total - 4K(t) - 1G(t)``.  (Exact while
    ``direct_map_level3_collapses`` is 0, as measured on every kernel in
    ../groundtruth; a run with level-3 collapses is off by 1 GiB per collapse.)
    """
    names = ["DirectMap4k", "DirectMap2M", "DirectMap1G"]
    tl = store.scan(out, "timeline")
    if set(names) <= set(tl.select("counter").unique().collect()["counter"]):
        return timeline(out, names)
    gib_kb = 1 << 20
    sampled = (tl.filter(pl.col("counter").is_in(["DirectMap4k", "direct_map_level3_splits"]))
               .group_by("run_id", "event_index")
               .agg(pl.col("ts_ns").first(),
                    pl.col("value").filter(pl.col("counter") == "DirectMap4k").sum().alias("k4"),
                    pl.col("value").filter(pl.col("counter") == "direct_map_level3_splits").sum().alias("l3")))
    final = (store.scan(out, "counters").group_by("run_id")
             .agg(counter("DirectMap4k").alias("k4_end"), counter("DirectMap2M").alias("m2_end"),
                  counter("DirectMap1G").alias("g1_end"), counter("direct_map_level3_splits").alias("l3_end")))
    g1 = pl.col("g1_end") + (pl.col("l3_end") - pl.col("l3")) * gib_kb
    total = pl.col("k4_end") + pl.col("m2_end") + pl.col("g1_end")
    wide = (sampled.join(final, on="run_id")
            .select("run_id", "event_index", "ts_ns", pl.col("k4").alias("DirectMap4k"),
                    (total - pl.col("k4") - g1).alias("DirectMap2M"), g1.alias("DirectMap1G")))
    return (wide.unpivot(index=["run_id", "event_index", "ts_ns"], on=names, variable_name="counter")
            .join(runs(out).select("run_id", "policy", "trace", "nr_cpus"), on="run_id")
            .group_by("policy", "nr_cpus", "trace", "counter", "event_index")
            .agg(pl.col("ts_ns").first(), pl.col("value").mean())
            .sort("policy", "nr_cpus", "trace", "counter", "event_index"))
