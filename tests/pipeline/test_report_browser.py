"""The report in a real browser: headless Chromium (Debian's ``chromium``) via Playwright.

Every chart must render (an SVG or canvas in its container, vega-embed
finished without error), the console must stay free of errors, and the page
must not try to fetch anything that is not the file itself.  A screenshot
goes to ``test-artifacts/``.  Skips when Chromium or Playwright is missing,
except under ``CI``, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PERMTRACE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ALL_CHARTS = ["bars", "cumulative", "composition", "memory_map", "waste", "per_op", "sweep"]


def _need_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = "playwright is not installed" if sync_playwright is None else (
        None if (os.path.exists(CHROMIUM) or shutil.which("chromium")) else f"no Chromium at {CHROMIUM}")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {missing} (.ci/run installs Debian's chromium)")
        pytest.skip(missing)
    return sync_playwright


def open_report(report: Path, screenshot: Path) -> dict:
    """Load ``report`` in headless Chromium; return what rendered and what went wrong."""
    sync_playwright = _need_browser()
    exe = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    errors: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def route(r):
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    fetched.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(report.resolve().as_uri())
            page.wait_for_function(
                "[...document.querySelectorAll('.chart')].every(e => e.dataset.rendered || e.dataset.error)",
                timeout=60_000)
            charts = {el.get_attribute("id"): {
                "error": el.get_attribute("data-error"),
                "drawn": el.query_selector("svg, canvas") is not None,
                "marks": len(el.query_selector_all("svg .role-mark > *")),
            } for el in page.query_selector_all(".chart")}
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"charts": charts, "errors": errors, "fetched": fetched}


@pytest.mark.browser
def test_report_renders_every_chart_offline_in_chromium(tmp_path, make):
    # GIVEN results of two policies at two CPU counts (so every chart, the sweep too, has data)
    results = make.dataset(tmp_path / "results", {"legacy": [10, 11, 12], "perm_alloc": [3, 4, 5]}, cpus=(4, 16))
    assert main(["report", str(results)]) == 0
    # WHEN the report opens in Chromium with every non-file request blocked
    seen = open_report(results / "report.html", REPO / "test-artifacts" / "report.png")
    # THEN each chart drew an SVG with marks, vega-embed reported no error, and nothing was fetched
    assert list(seen["charts"]) == ALL_CHARTS
    for cid, chart in seen["charts"].items():
        assert chart["error"] is None, (cid, chart["error"])
        assert chart["drawn"] and chart["marks"] > 0, cid
    assert seen["errors"] == []
    assert seen["fetched"] == []


@pytest.mark.browser
@pytest.mark.slow
def test_demo_report_renders_in_chromium(demo_dir):
    seen = open_report(demo_dir / "report.html", REPO / "test-artifacts" / "demo-report.png")
    assert set(seen["charts"]) >= {"bars", "cumulative", "composition", "memory_map", "waste", "per_op"}
    for cid, chart in seen["charts"].items():
        assert chart["error"] is None and chart["drawn"], cid
    assert seen["errors"] == [] and seen["fetched"] == []
