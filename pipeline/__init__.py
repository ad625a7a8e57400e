"""Runs things: the Typer CLI, run specs, fan-out, the result store, Polars metrics."""
