"""Commands over results: ``replay``, ``report``, ``compare``, ``export perfetto``, ``demo``.

Thin: each command parses options and calls :mod:`pipeline.runs`,
:mod:`pipeline.metrics`, :mod:`pipeline.compare`, :mod:`pipeline.perfetto`
or :mod:`pipeline.demo`; exit codes are decided in :mod:`pipeline.cli`
(``compare`` raises :class:`pipeline.compare.ThresholdCrossed`, exit 1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from traces.errors import PermtraceError


def _cpus(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        cpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PermtraceError(f"--cpus {text!r}: expected CPU counts separated by commas, e.g. 2,64,256") from None
    if not cpus or min(cpus) < 1:
        raise PermtraceError(f"--cpus {text!r}: CPU counts must be >= 1")
    return cpus


def replay_batch(specs, out: Path, *, jobs: int | None, scheduler: str | None) -> tuple[int, int]:
    """Run the pending ``specs`` into ``out`` with a progress bar on a terminal; (ran, skipped)."""
    from pipeline import runs

    todo = runs.pending(specs, out)
    skipped = len(specs) - len(todo)
    if not todo:
        return 0, skipped
    if sys.stderr.isatty():
        with typer.progressbar(length=len(todo), label=f"replaying {len(todo)} runs", file=sys.stderr) as bar:
            runs.run_all(todo, out, jobs=jobs, scheduler=scheduler, on_done=lambda: bar.update(1))
    else:
        runs.run_all(todo, out, jobs=jobs, scheduler=scheduler)
    return len(todo), skipped


def write_report(results: Path, out_html: Path, *, png_dir: Path | None = None, baseline: str | None = None,
                 cost_pairs: tuple[str, ...] | list[str] = (), title: str = "permtrace report") -> tuple[Path, str]:
    """Build the report of a result dataset and write its files atomically.

    Returns (report path, headline table as text).
    """
    import polars as pl

    from pipeline import metrics, store
    from reports.charts import CUMULATIVE, from_results
    from reports.html import render, text_table
    from traces.io import atomic_path

    cost = metrics.CostModel.from_pairs(list(cost_pairs))
    per_run = metrics.per_run(results, cost)
    summary = metrics.summarize(per_run).collect()
    base = metrics.pick_baseline(sorted(summary["policy"].unique().to_list()), baseline)
    head = metrics.headline(summary, base)
    runs = metrics.runs(results)
    # Memory map: one run per (policy, trace), the lowest seed at the trace's largest CPU count.
    shown = (runs.filter(pl.col("nr_cpus") == pl.col("nr_cpus").max().over("trace")).sort("seed")
             .group_by("policy", "trace").first().select("run_id", "policy", "trace"))
    directmap = store.scan(results, "directmap").join(shown, on="run_id").select("policy", "trace", "region", "level")
    timeline = pl.concat([metrics.timeline(results, [c for c, _ in CUMULATIVE]),
                          metrics.directmap_timeline(results),
                          metrics.timeline(results, [f"emu_waste_bytes_{c}" for c in metrics.WASTE_CAUSES])])
    sections = []
    try:
        from pipeline import check_model
    except ImportError:
        check_model = None
    if check_model is not None and hasattr(check_model, "report_section"):
        section = check_model.report_section(results)
        if section is not None:
            sections.append(section)
    n_runs = runs.select(pl.len()).collect().item()
    notes = [f"{n_runs} runs in {results}; policies: {', '.join(sorted(summary['policy'].unique()))}.",
             "Totals add up the traces (each trace one machine of a fleet); intervals are 95% Student-t across seeds.",
             "Estimated cost model (ns): " + ", ".join(f"{k}={v:g}" for k, v in vars(cost).items())
             + " (see pipeline/metrics.py CostModel for sources; override with --cost key=value)."]
    data = from_results(summary=summary, headline=head, timeline=timeline.collect(), directmap=directmap.collect(),
                        per_op=metrics.per_op(results).collect(), baseline=base, sections=sections, notes=notes)
    files = render(data, title=title, images=png_dir is not None)
    for name, content in files.items():
        target = out_html if name == "report.html" else (
            out_html.with_name(name) if name == "summary.md" else png_dir / name)
        with atomic_path(target) as tmp:
            tmp.chmod(0o644)  # mkstemp makes 0600; a report is meant to be shared
            (tmp.write_bytes if isinstance(content, bytes) else tmp.write_text)(content)
    return out_html, text_table(head)


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise PermtraceError(f"{path} exists; pass --force to overwrite it")


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        traces: Annotated[list[Path], typer.Argument(help="Trace files (Parquet, schema v1).")],
        policy: Annotated[list[str], typer.Option("--policy", help="Policy or alias; repeat for several.")],
        out: Annotated[Path, typer.Option("--out", help="Result dataset directory.")],
        param: Annotated[list[str], typer.Option("-p", "--param", help="key=value (all policies) or policy.key=value.")] = [],  # noqa: B006
        seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 per run.")] = 1,
        cpus: Annotated[str | None, typer.Option(help="CPU count(s), comma-separated to sweep: 2,64,256.")] = None,
        mem: Annotated[str | None, typer.Option(help="Physical memory, e.g. 64G (default: the trace's).")] = None,
        jobs: Annotated[int, typer.Option(help="Local worker processes.")] = os.cpu_count() or 1,
        scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address, tcp://host:port.")] = None,
    ) -> None:
        """Replay TRACE... under each policy, seed and CPU count; resume an interrupted batch."""
        from pipeline import runs

        specs = runs.expand(traces, policy, param, seeds=seeds, cpus=_cpus(cpus),
                            mem_bytes=runs.parse_size(mem) if mem else None)
        ran, skipped = replay_batch(specs, out, jobs=jobs, scheduler=scheduler)
        typer.echo(f"{ran} runs replayed, {skipped} already complete -> {out}")

    @app.command()
    def report(
        results: Annotated[Path, typer.Argument(help="Result dataset directory (permtrace replay --out).")],
        out: Annotated[Path | None, typer.Option(help="HTML file (default DIR/report.html).")] = None,
        png: Annotated[Path | None, typer.Option(help="Also write every chart as PNG and SVG here.")] = None,
        baseline: Annotated[str | None, typer.Option(help="Baseline policy (default legacy).")] = None,
        cost: Annotated[list[str], typer.Option(help="Cost-model override key=value (ns).")] = [],  # noqa: B006
        force: Annotated[bool, typer.Option(help="Overwrite an existing report.")] = False,
    ) -> None:
        """Write an offline HTML report (and summary.md beside it) of a result dataset."""
        out = out or results / "report.html"
        _refuse_overwrite(out, force)
        path, table = write_report(results, out, png_dir=png, baseline=baseline, cost_pairs=cost)
        typer.echo(table + f"\nreport: {path}")

    @app.command()
    def compare(
        base: Annotated[Path, typer.Argument(help="Baseline result dataset.")],
        new: Annotated[Path, typer.Argument(help="New result dataset.")],
        fail_on: Annotated[list[str], typer.Option(help="Threshold METRIC>+5% / METRIC<-10% / METRIC>0; exit 1 if crossed.")] = [],  # noqa: B006
        cost: Annotated[list[str], typer.Option(help="Cost-model override key=value (ns).")] = [],  # noqa: B006
    ) -> None:
        """Every metric, baseline vs new: delta and ratio; exit 1 when a --fail-on threshold is crossed."""
        import polars as pl

        from pipeline import metrics
        from pipeline.compare import Threshold, ThresholdCrossed, compare as compare_sets, crossed
        from reports.html import text_table

        thresholds = [Threshold.parse(t) for t in fail_on]
        table = compare_sets(base, new, metrics.CostModel.from_pairs(cost))
        shown = table.rename({"change_pct": "change %"})
        if table["nr_cpus"].is_null().all():
            shown = shown.drop("nr_cpus")
        typer.echo(text_table(shown.select(pl.col("metric"), pl.exclude("metric"))))
        failed = crossed(table, thresholds)
        if failed:
            raise ThresholdCrossed(f"{len(failed)} threshold(s) crossed:\n" + "\n".join(f"FAIL: {x}" for x in failed))
        if thresholds:
            typer.echo(f"all {len(thresholds)} thresholds passed")

    export = typer.Typer(help="Export results to other tools.", no_args_is_help=True)
    app.add_typer(export, name="export")

    @export.command("perfetto")
    def export_perfetto(
        results: Annotated[Path, typer.Argument(help="Result dataset directory.")],
        out: Annotated[Path, typer.Option(help="Chrome trace-event JSON file (opens in ui.perfetto.dev).")],
        force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
    ) -> None:
        """Timelines (shootdowns, splits, waste... per policy) as Chrome trace-event JSON."""
        from pipeline import perfetto

        _refuse_overwrite(out, force)
        typer.echo(f"wrote {perfetto.export(results, out)}")

    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Output directory.")] = Path("permtrace-demo"),
        jobs: Annotated[int, typer.Option(help="Local worker processes.")] = os.cpu_count() or 1,
        force: Annotated[bool, typer.Option(help="Reuse a directory holding other results.")] = False,
    ) -> None:
        """The main job: synthesize the built-in workloads, replay every built-in policy x 3 seeds, report."""
        from pipeline import demo as demo_mod

        report, table, seconds = demo_mod.run(out, jobs=jobs, force=force)
        typer.echo(table + f"\nreport: {report}  (summary.md beside it; {seconds:.1f} s)")
