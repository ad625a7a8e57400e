"""``permtrace groundtruth qemu``: module load/unload ground truth from a Debian kernel under QEMU.

The work is in :mod:`pipeline.qemu`; this module only parses options.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from pipeline.qemu import debian

#: Ten modules the end-to-end check uses: small and large, file systems and
#: networking; with their dependencies, 17 .ko files on Debian 6.1.
EXAMPLE_MODULES = "crc32c_generic,ext4,xfs,vxlan,tun,veth,loop,squashfs,overlay,nf_tables"


def qemu(
    kernel_deb: str = typer.Option(..., "--kernel-deb", metavar="NAME",
                                   help="linux-image package (linux-image-6.1.0-56-amd64), "
                                        "or a release (6.1) for the newest such package apt knows"),
    modules: str = typer.Option(..., "--modules", metavar="LIST",
                                help=f"modules to load then unload, comma-separated, e.g. {EXAMPLE_MODULES}; "
                                     "dependencies are added"),
    cpus: int = typer.Option(2, "--cpus", min=1, help="guest CPUs (-smp)"),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="output directory"),
    cache: Path = typer.Option(debian.DEFAULT_CACHE, "--cache", metavar="DIR",
                               help="where downloaded and unpacked packages are kept"),
    mem: str = typer.Option("4G", "--mem", help="guest RAM (-m)"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds before the guest is killed"),
    cpa: bool = typer.Option(True, "--cpa/--no-cpa",
                             help="also probe __change_page_attr_set_clr (PFN of every page CPA touches)"),
    trace_buf_kb: int = typer.Option(16384, "--trace-buf-kb", min=64, help="guest trace buffer per CPU, KiB"),
    name: str = typer.Option(None, "--name", help="trace file name (default <kernel release>-smp<cpus>)"),
    force: bool = typer.Option(False, "--force", help="overwrite earlier outputs in DIR"),
) -> None:
    """Boot a stock Debian kernel under QEMU (TCG), load and unload modules while tracing, import the trace."""
    from pipeline.qemu import groundtruth_qemu

    wanted = [m for m in modules.replace(",", " ").split() if m]
    summary = groundtruth_qemu(
        kernel_deb, wanted, cpus, out, cache=cache, mem=mem, timeout_s=timeout, cpa=cpa,
        trace_buf_kb=trace_buf_kb, name=name, force=force,
        command=shlex.join(["permtrace", *sys.argv[1:]]),
        progress=lambda msg: typer.echo(f"groundtruth qemu: {msg}", err=True))
    g, t = summary["guest"], summary["timings_s"]
    typer.echo(f"{out / summary['trace']}: {g['loaded']}/{len(summary['modlist'])} modules loaded, "
               f"{g['trace_lines']} trace lines; wall {t['total']:.1f} s "
               f"(download {t['download']:.1f}, boot {t['boot']:.1f})")
    for failure in g["insmod_failed"]:
        typer.echo(f"warning: insmod failed: {failure}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``qemu`` to the ``groundtruth`` group, which pipeline.cmd_kernel owns and registers."""
    from pipeline.cmd_kernel import groundtruth_app

    groundtruth_app.command("qemu")(qemu)
