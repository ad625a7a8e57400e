"""The report's charts: aggregated Polars frames in, Vega-Lite specs out.

memray style: :func:`from_results` reduces the frames the pipeline hands
over to the few rows each chart draws (aggregation happens here, in
Polars, never in the browser), and :func:`charts` turns them into Altair
charts.  Nothing here reads files or knows the result store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import polars as pl

from reports.colors import scale

#: Direct-map level codes (emulator.result.LEVEL_4K/2M/1G) and their names.
LEVEL_NAMES: dict[int, str] = {0: "4K", 1: "2M", 2: "1G"}
LEVEL_COLORS: dict[str, str] = {"4K": "#d62728", "2M": "#ffbf00", "1G": "#2ca02c"}

#: Per-policy bar metrics: (metric, axis title).
BAR_METRICS: tuple[tuple[str, str], ...] = (
    ("shootdowns", "shootdowns (all-CPU flush rounds)"),
    ("shootdowns_per_load", "shootdowns per load"),
    ("splits", "direct-map splits (L2 + L3)"),
    ("waste_mean_mib", "waste, time-weighted mean (MiB)"),
    ("shootdown_cost_ms", "est. CPU time lost (ms)"),
    ("text_tlb_entries_4k", "exec text TLB entries, 4K"),
    ("text_tlb_entries_2m", "exec text TLB entries, 2M"),
)
#: Cumulative timeline counters: (counter, title).
CUMULATIVE: tuple[tuple[str, str], ...] = (
    ("emu_shootdowns", "shootdowns"),
    ("direct_map_level2_splits", "direct-map L2 splits"),
    ("direct_map_level3_splits", "direct-map L3 splits"),
)
DIRECTMAP_COUNTERS: dict[str, str] = {"DirectMap4k": "4K", "DirectMap2M": "2M", "DirectMap1G": "1G"}
#: Memory map geometry: one row per 512 MiB = 256 regions of 2 MiB, one pixel each.
REGIONS_PER_ROW = 256


@dataclass
class ReportData:
    """Everything the report draws, already aggregated (small frames)."""

    policies: list[str]
    baseline: str
    headline: pl.DataFrame
    bars: pl.DataFrame          # policy, metric, title, mean, lo, hi
    cumulative: pl.DataFrame    # policy, trace, series, ts_s, value
    composition: pl.DataFrame   # policy, trace, level, ts_s, gib
    memory_map: pl.DataFrame    # policy, trace, level, row, x, x2 (run-length cells)
    waste: pl.DataFrame         # policy, trace, cause, ts_s, mib
    per_op: pl.DataFrame        # policy, op, shootdowns_per_event (one row per run and op)
    sweep: pl.DataFrame         # policy, nr_cpus, mean, lo, hi (empty unless several CPU counts)
    sections: list[tuple[str, pl.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _run_length(directmap: pl.DataFrame) -> pl.DataFrame:
    """Regions -> horizontal runs of equal level per memory-map row (x in regions)."""
    d = directmap.sort("policy", "trace", "region").with_columns(
        (pl.col("region") // REGIONS_PER_ROW).alias("row"),
        (pl.col("region") % REGIONS_PER_ROW).alias("x"),
    )
    change = ((pl.col("level") != pl.col("level").shift(1)) | (pl.col("row") != pl.col("row").shift(1))
              ).fill_null(True).over("policy", "trace")
    return (d.with_columns(change.cum_sum().over("policy", "trace").alias("run"))
            .group_by("policy", "trace", "run")
            .agg(pl.col("row").first(), pl.col("level").first(), pl.col("x").min(),
                 (pl.col("x").max() + 1).alias("x2"))
            .with_columns(pl.col("level").replace_strict(LEVEL_NAMES, return_dtype=pl.String))
            .sort("policy", "trace", "run").drop("run"))


def from_results(*, summary: pl.DataFrame, headline: pl.DataFrame, timeline: pl.DataFrame,
                 directmap: pl.DataFrame, per_op: pl.DataFrame, baseline: str,
                 sections: list[tuple[str, pl.DataFrame]] | None = None,
                 notes: list[str] | None = None) -> ReportData:
    """Reduce the pipeline's frames to what each chart draws.

    summary: ``policy, nr_cpus, metric, mean, lo, hi`` (pipeline.metrics.summarize);
    timeline: ``policy, nr_cpus, trace, counter, event_index, ts_ns, value``;
    directmap: ``policy, trace, region, level`` for one run per (policy, trace);
    per_op: one row per (run, op) with ``policy, nr_cpus, op, shootdowns_per_event``.
    In a CPU sweep (``summary.nr_cpus`` not null), charts other than the
    sweep show the largest CPU count; otherwise every trace at its own.
    """
    cpus = summary["nr_cpus"].max()

    def at_cpus(frame: pl.DataFrame) -> pl.DataFrame:
        return frame if cpus is None else frame.filter(pl.col("nr_cpus") == cpus)

    titles = pl.DataFrame({"metric": [m for m, _ in BAR_METRICS], "title": [t for _, t in BAR_METRICS]})
    bars = (at_cpus(summary).join(titles, on="metric")
            .select("policy", "metric", "title", "mean", "lo", "hi").sort("metric", "policy"))
    tl = at_cpus(timeline).with_columns((pl.col("ts_ns") / 1e9).alias("ts_s"))
    cumulative = (tl.filter(pl.col("counter").is_in([c for c, _ in CUMULATIVE]))
                  .with_columns(pl.col("counter").replace_strict(dict(CUMULATIVE)).alias("series"))
                  .select("policy", "trace", "series", "ts_s", "value"))
    # A stacked area needs one value per x: several events can share a ts_ns, keep the last sample.
    last_per_ts = pl.col("event_index") == pl.col("event_index").max().over("policy", "trace", "counter", "ts_ns")
    composition = (tl.filter(pl.col("counter").is_in(list(DIRECTMAP_COUNTERS)) & last_per_ts)
                   .with_columns(pl.col("counter").replace_strict(DIRECTMAP_COUNTERS).alias("level"),
                                 (pl.col("value") / (1 << 20)).alias("gib"))
                   .select("policy", "trace", "level", "ts_s", "gib"))
    waste = (tl.filter(pl.col("counter").str.starts_with("emu_waste_bytes_") & last_per_ts)
             .with_columns(pl.col("counter").str.strip_prefix("emu_waste_bytes_").alias("cause"),
                           (pl.col("value") / (1 << 20)).alias("mib"))
             .select("policy", "trace", "cause", "ts_s", "mib"))
    sweep = pl.DataFrame(schema={"policy": pl.String, "nr_cpus": pl.Int64, "mean": pl.Float64,
                                 "lo": pl.Float64, "hi": pl.Float64})
    if summary["nr_cpus"].n_unique() > 1:
        sweep = (summary.filter(pl.col("metric") == "shootdown_cost_ms")
                 .select("policy", "nr_cpus", "mean", "lo", "hi").sort("policy", "nr_cpus"))
    return ReportData(
        policies=sorted(summary["policy"].unique().to_list()),
        baseline=baseline,
        headline=headline,
        bars=bars,
        cumulative=cumulative,
        composition=composition,
        memory_map=_run_length(directmap),
        waste=waste,
        per_op=at_cpus(per_op).select("policy", "op", "shootdowns_per_event"),
        sweep=sweep,
        sections=sections or [],
        notes=notes or [],
    )


def _data(df: pl.DataFrame) -> alt.Data:
    # Inline values (aggregated already, so small); floats rounded for a stable, compact page.
    return alt.Data(values=df.with_columns(pl.selectors.float().round(6)).to_dicts())


def _per_trace(chart: alt.Chart, df: pl.DataFrame, policies: list[str]) -> alt.VConcatChart:
    """One row of per-policy panels per trace, each trace with its own data and scales.

    (Vega-Lite ignores ``resolve_scale(x="independent")`` for stacked areas in
    a row x column facet, so traces of different lengths get a row each.)
    """
    traces = sorted(df["trace"].unique().to_list())
    return alt.vconcat(*(
        chart.facet(column=alt.Column("policy:N", sort=policies, title=None), title=t,
                    data=_data(df.filter(pl.col("trace") == t)))
        for t in traces)).resolve_scale(color="shared")


def charts(data: ReportData) -> dict[str, tuple[str, alt.TopLevelMixin]]:
    """Chart id -> (title, chart), in page order; charts without data are left out."""
    color = alt.Color("policy:N", scale=alt.Scale(**scale(data.policies)), title="policy")
    out: dict[str, tuple[str, alt.TopLevelMixin]] = {}

    if data.bars.height:
        base = alt.Chart().encode(x=alt.X("policy:N", title=None, sort=data.policies))
        bar = base.mark_bar().encode(y=alt.Y("mean:Q", title=None), color=color,
                                     tooltip=["policy:N", "mean:Q", "lo:Q", "hi:Q"])
        err = base.mark_errorbar(ticks=True, color="black").encode(y="lo:Q", y2="hi:Q")
        out["bars"] = ("Per policy: mean across seeds, 95% interval",
                       alt.layer(bar, err, data=_data(data.bars)).properties(width=120, height=180)
                       .facet(column=alt.Column("title:N", title=None, sort=[t for _, t in BAR_METRICS]))
                       .resolve_scale(y="independent"))
    if data.cumulative.height:
        out["cumulative"] = ("Cumulative shootdowns and splits over trace time (mean across seeds)",
                             alt.Chart(_data(data.cumulative)).mark_line(interpolate="step-after").encode(
                                 x=alt.X("ts_s:Q", title="trace time (s)"),
                                 y=alt.Y("value:Q", title=None), color=color,
                                 tooltip=["policy:N", "ts_s:Q", "value:Q"])
                             .properties(width=220, height=140)
                             .facet(row=alt.Row("series:N", title=None), column=alt.Column("trace:N", title="trace"))
                             .resolve_scale(x="independent", y="independent"))
    level_color = alt.Color("level:N", title="direct-map level", sort=list(LEVEL_COLORS),
                            scale=alt.Scale(domain=list(LEVEL_COLORS), range=list(LEVEL_COLORS.values())))
    if data.composition.height:
        area = alt.Chart().mark_area(interpolate="step-after").encode(
            x=alt.X("ts_s:Q", title="trace time (s)"), y=alt.Y("gib:Q", stack=True, title="GiB"),
            color=level_color, order=alt.Order("level:N", sort="descending")).properties(width=200, height=110)
        out["composition"] = ("Direct-map composition over time (GiB mapped at 4K / 2M / 1G, mean across seeds)",
                              _per_trace(area, data.composition, data.policies))
    if data.memory_map.height:
        cells = alt.Chart().mark_rect().encode(
                                 x=alt.X("x:Q", title="2 MiB region within the 512 MiB row",
                                         scale=alt.Scale(domain=[0, REGIONS_PER_ROW], nice=False)),
                                 x2="x2:Q",
                                 y=alt.Y("row:O", title="physical address", axis=alt.Axis(labels=False, ticks=False)),
                                 color=level_color, tooltip=["row:O", "x:Q", "x2:Q", "level:N"]
                                 ).properties(width=REGIONS_PER_ROW, height=alt.Step(2))
        out["memory_map"] = ("Final direct map (lowest seed): one cell per 2 MiB region, one row per 512 MiB",
                             _per_trace(cells, data.memory_map, data.policies))
    if data.waste.height:
        area = alt.Chart().mark_area(interpolate="step-after").encode(
            x=alt.X("ts_s:Q", title="trace time (s)"), y=alt.Y("mib:Q", stack=True, title="MiB"),
            color=alt.Color("cause:N", title="cause")).properties(width=200, height=110)
        out["waste"] = ("Waste over time by cause (MiB, mean across seeds)",
                        _per_trace(area, data.waste, data.policies))
    if data.per_op.height:
        out["per_op"] = ("Shootdowns per event, by op (distribution over runs)",
                         alt.Chart(_data(data.per_op)).mark_boxplot(extent="min-max").encode(
                             x=alt.X("policy:N", title=None, sort=data.policies),
                             y=alt.Y("shootdowns_per_event:Q", title="shootdowns per event"), color=color)
                         .properties(width=150, height=160)
                         .facet(column=alt.Column("op:N", title="op"))
                         .resolve_scale(y="independent"))
    if data.sweep.height:
        base = alt.Chart(_data(data.sweep)).encode(
            x=alt.X("nr_cpus:Q", title="CPUs", scale=alt.Scale(type="log", base=2)), color=color)
        out["sweep"] = ("Estimated CPU time lost to shootdowns against CPU count (ms, 95% interval)",
                        alt.layer(base.mark_line(point=True).encode(y=alt.Y("mean:Q", title="ms")),
                                  base.mark_errorbar().encode(y="lo:Q", y2="hi:Q"))
                        .properties(width=420, height=240))
    return out


def vega_lite_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec, without the ``$schema`` URL (the page must name no URL)."""
    spec = chart.to_dict()
    spec.pop("$schema", None)
    return spec
