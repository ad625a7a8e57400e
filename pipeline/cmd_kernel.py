"""Real kernels: ``record``, ``import ftrace``, ``groundtruth bpf``, ``check-model``.

``groundtruth_app`` is the ``groundtruth`` group; ``pipeline.cmd_qemu``
adds its ``qemu`` command to it (this module registers first).
"""

from __future__ import annotations

from pathlib import Path

import typer

from traces.errors import PermtraceError

groundtruth_app = typer.Typer(help="Measure real kernels: produce traces with observations.",
                              no_args_is_help=True)
import_app = typer.Typer(help="Import foreign trace formats.", no_args_is_help=True)


def _interrupted() -> typer.Abort:
    typer.echo("permtrace: interrupted; host tracing state restored", err=True)
    return typer.Abort()


@import_app.command("ftrace")
def import_ftrace_cmd(
    file: Path = typer.Argument(..., help="tracefs 'trace' text, 'trace-cmd report' output, "
                                          "or a ground-truth serial log (.gz accepted)"),
    out: Path = typer.Option(..., "--out", metavar="TRACE", help="trace to write (.parquet)"),
    bpf_progs: Path = typer.Option(None, "--bpf-progs", metavar="FILE.json",
                                   help="BPF program sizes: 'bpftool prog show --json' output or a "
                                        "gt_bpf.py case JSON (which also gives the starting state)"),
) -> None:
    """Import kernel tracer output as a trace plus <TRACE>.observed.parquet."""
    from traces.importers.ftrace import import_ftrace

    typer.echo(str(import_ftrace(file, out, bpf_progs=bpf_progs)))


def record(
    out: Path = typer.Option(..., "--out", metavar="TRACE", help="trace to write (.parquet)"),
    duration: float = typer.Option(None, "--duration", metavar="S", min=0.0,
                                   help="seconds to record (default: until Ctrl-C)"),
    tracefs: Path = typer.Option(None, "--tracefs", metavar="PATH",
                                 help="tracefs mount (default /sys/kernel/tracing; mounted "
                                      "temporarily if absent)"),
) -> None:
    """Record this host's workload (root): BPF loads/frees, modules, vmalloc, and what the kernel did."""
    from traces.record import Interrupted
    from traces.record import record as do_record

    try:
        summary = do_record(out, duration, tracefs=tracefs)
    except Interrupted:
        raise _interrupted() from None
    typer.echo(str(summary))


@groundtruth_app.command("bpf")
def groundtruth_bpf_cmd(
    n: int = typer.Option(100, "--n", min=1, help="programs to load (then free)"),
    insns: int = typer.Option(4096, "--insns", min=2, help="instructions per program"),
    classic: bool = typer.Option(False, "--classic", help="classic BPF via SO_ATTACH_FILTER "
                                                          "(JIT sizes estimated)"),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="output directory"),
    tracefs: Path = typer.Option(None, "--tracefs", metavar="PATH", help="tracefs mount"),
    settle: float = typer.Option(3.0, "--settle", min=0.0,
                                 help="seconds to keep recording after the frees (deferred work)"),
) -> None:
    """Load and free real BPF programs on this kernel while recording (root; ~4 s for 100 programs)."""
    from traces.record import Interrupted, groundtruth_bpf

    try:
        summary, t = groundtruth_bpf(out, n, insns, classic=classic, tracefs=tracefs, settle_s=settle)
    except Interrupted:
        raise _interrupted() from None
    typer.echo(str(summary))
    typer.echo("timings: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))


def check_model_cmd(
    trace: Path = typer.Argument(..., help="a trace with <name>.observed.parquet beside it"),
    policy: str = typer.Option(..., "--policy", "-P", help="policy or kernel alias, e.g. linux-6.1"),
    seeds: int = typer.Option(None, "--seeds", min=1, show_default=False,
                              help="seeds to replay; splits must fall within their min..max "
                                   "(default 39: check_model.DEFAULT_SEEDS)"),
    param: list[str] = typer.Option([], "--param", "-p", metavar="NAME=VALUE", help="policy parameter"),
) -> None:
    """Replay a recorded trace and compare with what the kernel did; exit 1 if a check fails."""
    import polars as pl

    from pipeline.check_model import DEFAULT_SEEDS, ModelMismatch, check_model

    seeds = seeds or DEFAULT_SEEDS
    params = {}
    for p in param:
        key, sep, value = p.partition("=")
        if not sep:
            raise PermtraceError(f"--param {p!r}: expected NAME=VALUE")
        params[key] = value
    result = check_model(trace, policy, seeds, params=params)
    typer.echo(f"{trace} under {policy}, {seeds} seeds:")
    typer.echo(result.table())
    if not result.ok:
        off = result.frame.filter(pl.col("ok") == False).height  # noqa: E712
        raise ModelMismatch(f"check-model: {off} row(s) marked OFF: the model disagrees with the kernel")
    typer.echo("check-model: ok")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
    app.command("record")(record)
    app.add_typer(groundtruth_app, name="groundtruth")
    app.command("check-model")(check_model_cmd)
