"""``permtrace policies`` and ``permtrace bench``."""

from __future__ import annotations

from pathlib import Path

import typer


#: Issue 3's first bar for ``permtrace bench``: events/s per policy on one core.
BAR_EVENTS_PER_S = 500_000


def _fmt(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def policies_cmd(verbose: bool = typer.Option(False, "--verbose", "-v",
                                              help="also show each policy's modelling simplifications")) -> None:
    """List policies and aliases: parameters with types and defaults, and what each models."""
    from emulator import policies

    infos = policies.available()
    for name, info in infos.items():
        if info.base is not None:
            continue
        typer.echo(f"{name}  ({info.source})\n    {info.doc}")
        for param, (typ, default) in info.params.items():
            typer.echo(f"    -p {param}=<{typ.__name__}>  default {_fmt(default)}")
        aliases = [a for a in infos.values() if a.base == name]
        for a in aliases:
            preset = ", ".join(f"{k}={_fmt(v)}" for k, v in a.preset.items()) or "defaults"
            typer.echo(f"    alias {a.name} = {name} with {preset}")
        if verbose:
            for line in info.cls.SIMPLIFICATIONS:
                typer.echo(f"    simplification: {line}")
        typer.echo("")


def bench_cmd(
    sizes: str = typer.Option("100000,1000000", help="trace sizes in events, comma-separated"),
    policy: list[str] = typer.Option(None, "--policy", "-P", help="policies to run [all built-ins]"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "permtrace" / "bench", help="where bench traces are kept"),
    seed: int = typer.Option(0, help="seed of the traces and of the replays"),
    repeat: int = typer.Option(2, min=1, help="replays per (trace, policy); the fastest is reported"),
) -> None:
    """Replay mixed-fleet traces under every policy: events/s and peak memory per policy."""
    from emulator import policies
    from pipeline.bench import bench_trace, machine_info, run_one
    from traces.errors import PermtraceError

    try:
        counts = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise PermtraceError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    names = policy or [n for n, i in policies.available().items() if i.base is None]
    typer.echo(f"machine: {machine_info()}")
    typer.echo(f"each (trace, policy) in its own child process pinned to one CPU, best of {repeat}; "
               "events/s from CPU time (wall in brackets); peak RSS of the child")
    typer.echo(f"{'trace':>34} {'policy':>14} {'events/s':>10} {'(wall)':>10} {'peak RSS MB':>12} {'shootdowns':>11}")
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in names}   # (events/s, RSS) by size
    for n in sorted(counts):
        trace = bench_trace(n, cache_dir, seed)
        for name in names:
            r = run_one(trace, name, seed, repeat)
            rows[name].append((r["events"] / r["cpu_s"], r["peak_rss_mb"]))
            typer.echo(f"{trace.name:>34} {name:>14} {r['events'] / r['cpu_s']:>10.0f} "
                       f"{r['events'] / r['wall_s']:>10.0f} {r['peak_rss_mb']:>12.0f} {r['shootdowns']:>11}")
    typer.echo(f"bar (issue 3): >= {BAR_EVENTS_PER_S:,} events/s on the largest trace; peak RSS from the smallest "
               "to the largest trace")
    for name, res in rows.items():
        rate, rss = res[-1]
        verdict = "meets" if rate >= BAR_EVENTS_PER_S else "BELOW"
        typer.echo(f"{name:>14} {rate:>10,.0f} events/s ({verdict} the bar), peak RSS {res[0][1]:.0f} -> {rss:.0f} MB")


def register(app: typer.Typer) -> None:
    app.command("policies")(policies_cmd)
    app.command("bench")(bench_cmd)
