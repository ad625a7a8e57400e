"""permtrace commands (placeholder module; the owning issue fills it in)."""

import typer


def register(app: typer.Typer) -> None:
    pass
