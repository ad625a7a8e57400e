"""Render the report: one self-contained HTML page, ``summary.md``, optional PNG/SVG.

The page inlines the Vega, Vega-Lite and vega-embed JavaScript once (from
vl-convert's bundle) and each chart's spec, so it opens with no network,
e.g. on an air-gapped lab machine.  It names no fetchable URL: spec
``$schema`` URLs are dropped, and the only ``http`` strings left are inside
the vendored library (XML namespace names such as
``http://www.w3.org/2000/svg``, and links in its error messages and
editor action, which are disabled).  Each chart's container gets
``data-rendered="true"`` or ``data-error`` when vega-embed finishes, for the
browser test.
"""

from __future__ import annotations

import html
import json
import math

import polars as pl

from reports.charts import ReportData, charts, vega_lite_spec

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; } .note { color: #555; font-size: 0.9em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; border-radius: 2px; }
.chart { overflow-x: auto; }
"""


def fmt(value, pct: bool = False) -> str:
    """A table cell: ``n/a`` for missing, signed percent, integers without decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if pct:
        return f"{value:+.1f}%"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{int(value):,}"


def _cells(df: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    cols = df.columns
    rows = [[fmt(v, pct=c.endswith("%")) if not isinstance(v, str) else v for c, v in zip(cols, row, strict=True)]
            for row in df.iter_rows()]
    return cols, rows


def markdown_table(df: pl.DataFrame) -> str:
    """A GitHub/mailing-list friendly Markdown table."""
    cols, rows = _cells(df)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(df: pl.DataFrame) -> str:
    """A plain fixed-width table for the terminal."""
    cols, rows = _cells(df)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"


def _html_table(df: pl.DataFrame, colors: dict[str, str] | None = None) -> str:
    cols, rows = _cells(df)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        first = html.escape(r[0])
        if colors and r[0] in colors:
            first = f'<span class="swatch" style="background:{colors[r[0]]}"></span>{first}'
        body.append("<tr><td>" + first + "</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in r[1:]) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def summary_markdown(data: ReportData, title: str) -> str:
    """``summary.md``: the headline table, ready to paste into a review or an LKML post."""
    notes = "".join(f"\n- {n}" for n in data.notes)
    return (f"# {title}\n\nBaseline: `{data.baseline}`; change in percent against it; "
            f"means across seeds.\n\n{markdown_table(data.headline)}{notes}\n")


def render(data: ReportData, *, title: str = "permtrace report", images: bool = False) -> dict[str, str | bytes]:
    """The report's files as contents, by name: ``report.html``, ``summary.md`` and,
    with ``images``, ``<chart>.png`` and ``<chart>.svg`` for every chart.

    Pure: the caller writes them (atomically) where it wants.
    """
    import vl_convert

    from reports.colors import policy_color

    made = charts(data)
    specs = {cid: vega_lite_spec(chart) for cid, (_, chart) in made.items()}
    colors = {p: policy_color(p) for p in data.policies}
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Baseline <b>{html.escape(data.baseline)}</b>; every figure is the mean across seeds; "
             "changes are relative to the baseline.</p>",
             "<h2>Headline</h2>", _html_table(data.headline, colors)]
    for cid, (chart_title, _) in made.items():
        parts += [f"<h2>{html.escape(chart_title)}</h2>", f'<div class="chart" id="{cid}"></div>']
    for section_title, frame in data.sections:
        parts += [f"<h2>{html.escape(section_title)}</h2>", _html_table(frame)]
    if data.notes:
        parts += ["<h2>Notes</h2><ul class=\"note\">", *(f"<li>{html.escape(n)}</li>" for n in data.notes), "</ul>"]
    # JSON inside <script>: escape "</" so a label can never close the tag.
    spec_json = json.dumps(specs, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    script = ("const SPECS = " + spec_json + ";\n"
              "for (const [id, spec] of Object.entries(SPECS)) {\n"
              "  const el = document.getElementById(id);\n"
              "  vegaEmbed(el, spec, {renderer: 'svg', actions: false})\n"
              "    .then(() => el.setAttribute('data-rendered', 'true'))\n"
              "    .catch(err => { el.setAttribute('data-error', String(err)); console.error(err); });\n"
              "}\n")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>\n"
            f"<script>{vl_convert.javascript_bundle()}</script>\n</head><body>\n"
            + "\n".join(parts) + f"\n<script>\n{script}</script>\n</body></html>\n")
    files: dict[str, str | bytes] = {"report.html": page, "summary.md": summary_markdown(data, title)}
    if images:
        for cid, spec in specs.items():
            files[f"{cid}.svg"] = vl_convert.vegalite_to_svg(spec)
            files[f"{cid}.png"] = vl_convert.vegalite_to_png(spec, scale=2)
    return files
