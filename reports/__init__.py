"""Pure reporters: aggregated Polars frames in, Altair charts and files out."""
