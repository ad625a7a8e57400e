"""A small hand-written valid trace for the validation and CLI tests."""

from __future__ import annotations

from traces.schema import COLUMNS, SECTION_COLUMNS

#: (op, id, size, owner, extra columns); row i is event i.
EVENTS = [
    ("module_load", 1, 0, "ext4", {"text_size": 8192, "data_size": 4096, "init_text_size": 4096, "patch_sites": 2}),
    ("module_init_free", 1, 0, None, {}),
    ("bpf_prog_load", 2, 300, "sd_devices", {}),
    ("vmalloc", 3, 8192, None, {}),
    ("vfree", 3, 0, None, {}),
    ("exec_alloc", 4, 400, "kprobes", {}),
    ("text_patch", 0, 0, None, {"patch_sites": 3}),
    ("mem_pressure", 0, 1 << 20, None, {}),
    ("exec_free", 4, 0, None, {}),
    ("bpf_prog_free", 2, 0, None, {}),
    ("module_unload", 1, 0, None, {}),
]


def columns() -> dict[str, list]:
    """The trace as plain Python columns (edit them, then write with pyarrow)."""
    cols = {c: [] for c in COLUMNS}
    for i, (op, id_, size, owner, extra) in enumerate(EVENTS):
        cols["seq"].append(i)
        cols["ts_ns"].append(1000 * i)
        cols["cpu"].append(i % 2)
        cols["op"].append(op)
        cols["id"].append(id_)
        cols["size"].append(size)
        cols["owner"].append(owner)
        for c in (*SECTION_COLUMNS, "patch_sites"):
            cols[c].append(extra.get(c, 0))
    return cols
