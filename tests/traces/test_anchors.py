"""The shipped module anchors are exactly what the QEMU ground truth shows."""

from __future__ import annotations

import re

from traces.schema import SECTION_COLUMNS
from traces.synth._anchors import anchors_csv_text, derive_module_anchors, load_module_anchors


def test_shipped_csv_is_derived_from_the_guest_serial_log(groundtruth_dir):
    rows = derive_module_anchors(groundtruth_dir / "results/guest/serial_6.1_4level_smp2.log.gz")
    from importlib import resources
    shipped = resources.files("traces.data").joinpath("module_anchors.csv").read_text()
    assert anchors_csv_text(rows) == shipped


def test_anchors_agree_with_the_per_module_table(groundtruth_dir):
    """Core + init sections = the two module_alloc sizes; patch batches = text_poke_bp_batch column."""
    table = (groundtruth_dir / "results/guest/modules_4level_smp2.md").read_text()
    alloc, batches = {}, {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "load":
            alloc[cells[1]], batches[cells[1]] = int(cells[3]), int(cells[16])
    a = load_module_anchors()
    assert sorted(a["module"]) == sorted(alloc) and len(alloc) == 46
    for i, name in enumerate(a["module"]):
        assert sum(int(a[c][i]) for c in SECTION_COLUMNS) == alloc[name], name
        assert a["text_poke_bp_batches"][i] == batches[name], name
    assert a["patch_sites"][list(a["module"]).index("xfs")] == 1308
    assert sum(alloc.values()) == 10305536  # "TOTAL load" row
    header = table.splitlines()[0]
    assert re.search(r"\| module_alloc_bytes \|", header) and "text_poke_bp_batch" in header


def test_anchor_sizes_are_page_granular_and_text_present():
    a = load_module_anchors()
    for c in SECTION_COLUMNS:
        assert (a[c] % 4096 == 0).all()
    assert (a["text_size"] > 0).all() and (a["ko_vmalloc_bytes"] > 0).all()
