"""Pure reporters: frames in, specs and files out (no result store involved)."""

from __future__ import annotations

import re

import polars as pl
import pytest

from reports.charts import REGIONS_PER_ROW, from_results, vega_lite_spec, charts, _run_length
from reports.colors import FIXED, policy_color, scale
from reports.html import markdown_table, render


def _summary(policies=("legacy", "perm_alloc"), cpus=(4,)):
    rows = []
    for i, p in enumerate(policies):
        for c in cpus:
            for m in ("shootdowns", "shootdowns_per_load", "splits", "waste_mean_mib", "shootdown_cost_ms"):
                rows.append({"policy": p, "nr_cpus": c, "metric": m, "mean": 10.0 - i, "lo": 9.0 - i, "hi": 11.0 - i})
    return pl.DataFrame(rows)


def _data(policies=("legacy", "perm_alloc"), cpus=(4,), label="perm_alloc"):
    tl = pl.DataFrame({"policy": ["legacy"] * 2, "nr_cpus": [4, 4], "trace": ["t", "t"],
                       "counter": ["emu_shootdowns", "emu_waste_bytes_cache"], "event_index": [0, 0],
                       "ts_ns": [1_000_000_000, 1_000_000_000], "value": [3.0, 2097152.0]})
    dm = pl.DataFrame({"policy": ["legacy"] * 4, "trace": ["t"] * 4, "region": [0, 1, 2, 3],
                       "level": [1, 0, 0, 1]}, schema_overrides={"level": pl.UInt8})
    per_op = pl.DataFrame({"policy": ["legacy"], "nr_cpus": [4], "op": ["module_load"], "shootdowns_per_event": [5.0]})
    head = pl.DataFrame({"policy": ["legacy", label], "shootdowns": [10.0, 9.0], "shootdowns vs legacy %": [0.0, -10.0]})
    return from_results(summary=_summary(policies, cpus), headline=head, timeline=tl, directmap=dm,
                        per_op=per_op, baseline="legacy", sections=[("Model check", pl.DataFrame({"kind": ["x"]}))],
                        notes=["a note"])


def test_policy_colours_fixed_and_stable():
    assert policy_color("legacy") == FIXED["legacy"] == policy_color("linux-5.10")
    assert policy_color("my_policy") == policy_color("my_policy")
    assert scale(["perm_alloc", "legacy"]) == {"domain": ["legacy", "perm_alloc"],
                                               "range": [FIXED["legacy"], FIXED["perm_alloc"]]}


def test_memory_map_is_run_length_encoded_per_row():
    # GIVEN regions 0..513: 2M, then 4K at 1-2, 2M up to the row end, 4K at 512, 2M at 513
    levels = [1, 0, 0] + [1] * (REGIONS_PER_ROW - 3) + [0, 1]
    dm = pl.DataFrame({"policy": "p", "trace": "t", "region": range(len(levels)), "level": levels})
    rl = _run_length(dm)
    assert rl.select("row", "x", "x2", "level").rows() == [
        (0, 0, 1, "2M"), (0, 1, 3, "4K"), (0, 3, REGIONS_PER_ROW, "2M"), (1, 0, 1, "4K"), (1, 1, 2, "2M")]


def test_from_results_shows_largest_cpu_count_and_sweep_only_with_several():
    one = _data(cpus=(4,))
    assert one.sweep.is_empty() and set(one.bars["policy"]) == {"legacy", "perm_alloc"}
    two = _data(cpus=(4, 64))
    assert two.sweep["nr_cpus"].to_list() == [4, 64, 4, 64]
    assert "sweep" in charts(two) and "sweep" not in charts(one)


def test_specs_carry_no_schema_url_and_policy_colours():
    data = _data()
    spec = vega_lite_spec(charts(data)["bars"][1])
    assert "$schema" not in spec
    assert FIXED["perm_alloc"] in str(spec)


def test_html_is_self_contained_and_names_no_fetchable_url():
    files = render(_data())
    page = files["report.html"]
    # no element loads anything from the network
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", page, re.I)
    assert not re.search(r"@import", page)
    # outside the vendored library script, no http(s) URL at all
    library_start, library_end = page.index("<script>"), page.index("</script>")
    outside = page[:library_start] + page[library_end:]
    assert not re.search(r"https?://", outside)
    # inside it, only namespace names and strings the page never fetches (the editor link is disabled
    # with actions:false; the rest are error-message and spec-label strings)
    inside = set(re.findall(r"https?://[^\s\"'`)]+", page[library_start:library_end]))
    assert inside <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink", "http://www.w3.org/2000/xmlns/",
                      "https://github.com/vega/vega-lite/issues/2415", "https://vega.github.io/schema/vega/v6.json",
                      "https://vega.github.io/editor/"}
    assert "actions: false" in page
    for cid in ("bars", "cumulative", "memory_map", "waste", "per_op"):
        assert f'id="{cid}"' in page
    assert "Model check" in page and "a note" in page


def test_a_label_cannot_close_the_script_tag():
    bad = "</script><b>x"
    page = render(_data(policies=("legacy", bad), label=bad))["report.html"]
    assert r"<\/script><b>x" in page  # in the specs JSON, escaped
    assert page.count("</script>") == 2  # the library's and the specs' own closing tags only


def test_summary_markdown_carries_the_headline_table():
    md = render(_data())["summary.md"]
    assert "| policy | shootdowns | shootdowns vs legacy % |" in md
    assert "| perm_alloc | 9 | -10.0% |" in md


def test_png_and_svg_per_chart():
    files = render(_data(), images=True)
    for cid in charts(_data()):
        assert files[f"{cid}.png"][:8] == b"\x89PNG\r\n\x1a\n"
        assert files[f"{cid}.svg"].lstrip().startswith("<svg")


@pytest.mark.parametrize("df, expected", [
    (pl.DataFrame({"a": ["x"], "b": [1.5], "c %": [None]}), "| x | 1.50 | n/a |"),
    (pl.DataFrame({"a": ["x"], "b": [1234567.0], "c %": [12.34]}), "| x | 1,234,567 | +12.3% |"),
])
def test_markdown_cells(df, expected):
    assert expected in markdown_table(df)
