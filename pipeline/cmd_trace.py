"""``permtrace trace``: synth, info, validate (thin: the work is in ``traces``)."""

from __future__ import annotations

from pathlib import Path

import typer

from traces.errors import TraceError

#: How many problems of each kind ``trace validate`` prints (all are counted).
SHOW_PER_KIND = 50

trace_app = typer.Typer(help="Synthesize, describe and validate traces.", no_args_is_help=True)


@trace_app.command()
def synth(
    scenario: str = typer.Argument(None, help="scenario name (see --list)"),
    out: Path = typer.Option(None, "--out", "-o", help="Parquet file to write"),
    seed: int = typer.Option(0, help="random seed: same seed and options -> byte-identical file"),
    events: int = typer.Option(None, help="stop after this many events [scenario default]"),
    cpus: int = typer.Option(None, help="nr_cpus of the machine [scenario default]"),
    mem: str = typer.Option(None, help="memory of the machine, e.g. 64G [scenario default]"),
    duration: str = typer.Option(None, help="trace length, e.g. 24h, 30m, 90s [scenario default]"),
    list_: bool = typer.Option(False, "--list", help="describe each scenario in one line and exit"),
) -> None:
    """Write a synthetic workload trace."""
    from traces.synth import scenarios, synthesize

    if list_:
        for name, mod in scenarios().items():
            typer.echo(f"{name:16} {mod.SUMMARY}")
        return
    if scenario is None or out is None:
        raise TraceError("trace synth needs a SCENARIO and --out FILE",
                         hint="e.g. permtrace trace synth mixed-fleet --seed 1 --out trace.parquet")
    path = synthesize(scenario, out, seed=seed, nr_cpus=cpus, mem=mem, duration=duration, events=events)
    from traces.io import num_events
    typer.echo(f"wrote {path} ({num_events(path)} events)")


@trace_app.command()
def info(file: Path = typer.Argument(..., help="trace file")) -> None:
    """Print a trace's metadata, time span, counts and bytes per op, and live objects at the end."""
    from traces.validate import trace_summary

    s = trace_summary(file)
    typer.echo(f"file        {file}")
    typer.echo(f"events      {s.n_events}")
    for k, v in s.meta.items():
        if "\n" in v:
            v = f"({v.count(chr(10)) + 1} lines)"
        typer.echo(f"{k:11} {v}")
    if s.first_ts_ns is not None:
        span = (s.last_ts_ns - s.first_ts_ns) / 1e9
        typer.echo(f"time span   {s.first_ts_ns} .. {s.last_ts_ns} ns ({span:.3f} s)")
    typer.echo(f"\n{'op':18} {'events':>10} {'bytes':>16} {'patch_sites':>12}")
    for op, (n, nbytes, sites) in s.per_op.items():
        typer.echo(f"{op:18} {n:>10} {nbytes:>16} {sites:>12}")
    typer.echo(f"\n{'live at end':18} {'objects':>10} {'bytes':>16}")
    for kind, (n, nbytes) in s.live.items():
        typer.echo(f"{kind:18} {n:>10} {nbytes:>16}")


@trace_app.command()
def validate(file: Path = typer.Argument(..., help="trace file")) -> None:
    """Check a trace; list every problem (rows are 0-based event rows). Exit 0 valid, 2 invalid."""
    from traces.validate import validate_trace

    problems = validate_trace(file, limit_per_kind=SHOW_PER_KIND)
    if not problems:
        typer.echo(f"{file}: valid")
        return
    for p in problems:
        typer.echo(str(p))
    kinds = ", ".join(dict.fromkeys(p.kind for p in problems))
    # a PermtraceError, so pipeline.cli exits 2 (a typer.Exit code is lost with standalone_mode=False)
    raise TraceError(f"INVALID trace: problems of kind {kinds} listed above; rows are 0-based event rows",
                     file=str(file), hint="fix each listed problem; 'permtrace trace info' summarizes the trace")


def register(app: typer.Typer) -> None:
    app.add_typer(trace_app, name="trace")
