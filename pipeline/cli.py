"""The ``permtrace`` command line.

Each group of commands lives in its own ``pipeline/cmd_*.py`` module with a
``register(app)`` function; this file only assembles them and decides exit
codes, in one place (architecture.md section 5):

0 ok; 1 a ``compare`` threshold crossed; 2 bad usage or bad input
(any :class:`traces.errors.PermtraceError`); 3 internal error.
"""

from __future__ import annotations

import importlib
import sys

import typer

from traces.errors import PermtraceError

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

#: Command modules, each with ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = (
    "pipeline.cmd_trace",     # trace synth / info / validate
    "pipeline.cmd_emulator",  # policies, bench
    "pipeline.cmd_results",   # replay, report, compare, export, demo
    "pipeline.cmd_kernel",    # import, check-model, record, groundtruth bpf
    "pipeline.cmd_qemu",      # groundtruth qemu
)

app = typer.Typer(
    name="permtrace",
    help="What would this allocation policy for executable kernel memory cost on a real fleet?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app and map errors to exit codes."""
    try:
        # standalone_mode=False: click returns a typer.Exit's code instead of raising it
        rv = app(args=argv, standalone_mode=False)
    except PermtraceError as e:
        typer.echo(f"permtrace: error: {e}", err=True)
        return e.exit_code
    except typer.Abort:
        typer.echo("permtrace: aborted", err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place internal errors become exit 3
        # click's (or typer's bundled click's) usage errors: show them, exit 2
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return EXIT_BAD_INPUT
        import traceback
        traceback.print_exc()
        typer.echo(f"permtrace: internal error: {e!r} (please report this with the command line)", err=True)
        return EXIT_INTERNAL
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
