"""Module section-size anchors: 46 real Debian 6.1 modules, measured.

The anchors ship as ``traces/data/module_anchors.csv`` (the installed tool
cannot read ``shared/``).  :func:`derive_module_anchors` rebuilds that table
from the QEMU serial log in ``groundtruth/results/guest/`` and a test checks
that the shipped CSV is exactly what it derives.

How the log gives section sizes (Linux 6.1, ``kernel/module/strict_rwx.c``):
``complete_formation()`` calls ``module_enable_ro(mod, false)``, then
``module_enable_nx()``, then ``module_enable_x()``, each walking the core and
init ``module_layout`` with ``frob_text`` / ``frob_rodata`` /
``frob_ro_after_init`` / ``frob_writable_data``.  The kprobes on
``set_memory_{ro,nx,x}`` print ``npages`` of each call, in that order:

=====  ==========================================================
call   section (pages)
=====  ==========================================================
ro[0]  core text           (frob_text(core))
ro[1]  core rodata         (frob_rodata(core))
ro[2]  init text           (frob_text(init))
ro[3]  init rodata         (frob_rodata(init))
nx[1]  core ro_after_init  (frob_ro_after_init(core))
nx[2]  core writable data  (frob_writable_data(core))
nx[4]  init writable data  (frob_writable_data(init))
=====  ==========================================================

so sizes are page-granular (6.1 page-aligns every section boundary under
CONFIG_STRICT_MODULE_RWX).  ``patch_sites`` is the sum of ``nr`` over the
``text_poke_bp_batch`` calls during the insmod (jump labels and static calls
patched at load; on 6.1 almost every batch has nr=1).  ``ko_vmalloc_bytes``
is the first plain vmalloc area the insmod process allocates: the copy of
the ``.ko`` image (``copy_module_from_user``/``init_module_from_file``),
freed at the end of ``load_module`` (``free_copy``); the traced size minus
the 4 KiB guard page.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from importlib import resources
from pathlib import Path

import numpy as np

from traces.schema import SECTION_COLUMNS

PAGE_SIZE = 4096
ANCHOR_COLUMNS = ("module", *SECTION_COLUMNS, "patch_sites", "text_poke_bp_batches", "ko_vmalloc_bytes")

_VMALLOC_START = 0xFFFFC90000000000  # 4-level x86-64 VMALLOC_START (Documentation/arch/x86/x86_64/mm.rst)
_MARK = re.compile(r"tracing_mark_write: GT (\S+)(?: (\S+))?")
_EVENT = re.compile(r"^\s*(\S+)-\d+\s+\[\d+\].*?: (set_ro|set_nx|set_x|text_poke_bp_batch|alloc_va): (.*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")


def derive_module_anchors(serial_log: str | Path) -> list[dict[str, int | str]]:
    """Per-module section sizes (bytes) and patch sites from a guest serial log (.log or .log.gz)."""
    opener = gzip.open if str(serial_log).endswith(".gz") else open
    rows: list[dict[str, int | str]] = []
    cur: dict | None = None

    def finish():
        if cur is None:
            return
        ro, nx = cur["set_ro"], cur["set_nx"]
        if len(ro) < 4 or len(nx) < 5:
            raise ValueError(f"{cur['module']}: expected >= 4 set_memory_ro and 5 set_memory_nx calls")
        pages = {
            "text_size": ro[0], "rodata_size": ro[1], "init_text_size": ro[2], "init_rodata_size": ro[3],
            "ro_after_init_size": nx[1], "data_size": nx[2], "init_data_size": nx[4],
        }
        rows.append({
            "module": cur["module"],
            **{c: pages[c] * PAGE_SIZE for c in SECTION_COLUMNS},
            "patch_sites": sum(cur["text_poke_bp_batch"]),
            "text_poke_bp_batches": len(cur["text_poke_bp_batch"]),
            "ko_vmalloc_bytes": cur["ko"],
        })

    with opener(serial_log, "rt", errors="replace") as f:
        for line in f:
            if m := _MARK.search(line):
                finish()
                cur = None
                if m.group(1) == "insmod":
                    name = Path(m.group(2)).name.removesuffix(".ko")
                    cur = {"module": name, "set_ro": [], "set_nx": [], "set_x": [],
                           "text_poke_bp_batch": [], "ko": 0}
                continue
            if cur is None or not (m := _EVENT.match(line)):
                continue
            comm, kind, fields = m.group(1), m.group(2), dict(_FIELD.findall(m.group(3)))
            if kind in ("set_ro", "set_nx", "set_x"):
                cur[kind].append(int(fields["npages"]))
            elif kind == "text_poke_bp_batch":
                cur[kind].append(int(fields["nr"]))
            elif kind == "alloc_va" and comm == "insmod" and not cur["ko"] and not cur["set_ro"]:
                if int(fields["vstart"], 16) == _VMALLOC_START:
                    cur["ko"] = int(fields["size"]) - PAGE_SIZE
    finish()
    return rows


def anchors_csv_text(rows: list[dict[str, int | str]]) -> str:
    """The shipped CSV text for ``rows`` (with its provenance comment)."""
    out = io.StringIO()
    out.write("# Section sizes (bytes, page-granular), load-time patch sites and .ko copy size of the\n"
              "# 46 modules loaded by groundtruth/results/guest/serial_6.1_4level_smp2.log.gz\n"
              "# (Debian 6.1.0-56-amd64 under QEMU), derived by traces.synth._anchors.derive_module_anchors.\n")
    w = csv.DictWriter(out, fieldnames=ANCHOR_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def load_module_anchors() -> dict[str, np.ndarray]:
    """The shipped anchors as columns: ``module`` (str array) and int64 arrays for the rest."""
    text = resources.files("traces.data").joinpath("module_anchors.csv").read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    cols = {"module": np.array([r["module"] for r in rows])}
    for c in ANCHOR_COLUMNS[1:]:
        cols[c] = np.array([int(r[c]) for r in rows], dtype=np.int64)
    return cols
