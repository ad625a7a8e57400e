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
        for c in (*SECTION_COLUMNS, "patch_sites", "concurrent"):
            cols[c].append(extra.get(c, 0))
    return cols


def set_(col, row, value):
    def mutate(cols):
        cols[col][row] = value
    return mutate


#: GIVEN the valid trace WHEN this corruption THEN exactly these problems (kind, row, column)
CORRUPTIONS = {
    "unknown op": (set_("op", 6, "text_poke"), [("unknown_op", 6, "op")]),
    "seq repeats": (set_("seq", 5, 4), [("seq_not_increasing", 5, "seq")]),
    "seq goes down": (set_("seq", 3, 0), [("seq_not_increasing", 3, "seq")]),
    "ts backwards": (set_("ts_ns", 7, 10), [("ts_backwards", 7, "ts_ns")]),
    "free of unknown id": (set_("id", 4, 99), [("free_not_live", 4, "id")]),
    "free of freed id": (lambda c: (set_("op", 8, "vfree")(c), set_("id", 8, 3)(c)), [("free_not_live", 8, "id")]),
    "init free of unknown module": (set_("id", 1, 7), [("free_not_live", 1, "id")]),
    "load of a live id": (lambda c: (set_("op", 7, "exec_alloc")(c), set_("id", 7, 4)(c)), [("load_live", 7, "id")]),
    "zero size": (set_("size", 3, 0), [("zero_size", 3, "size")]),
    "zero mem_pressure": (set_("size", 7, 0), [("zero_size", 7, "size")]),
    "absurd size": (set_("size", 2, (1 << 40) + 1), [("absurd_size", 2, "size")]),
    "absurd section": (set_("data_size", 0, 1 << 41), [("absurd_size", 0, "data_size")]),
    "module sizes on a BPF load": (set_("text_size", 2, 4096), [("sections_on_non_module", 2, "text_size")]),
    "concurrent span past the end": (set_("concurrent", 8, 3), [("concurrent_past_end", 8, "concurrent")]),
    "concurrent spans nest": (lambda c: (set_("concurrent", 2, 3)(c), set_("concurrent", 4, 1)(c)),
                              [("nested_concurrent", 4, "concurrent")]),
    "module without sections": (lambda c: [c[s].__setitem__(0, 0) for s in ("text_size", "data_size", "init_text_size")],
                                [("zero_size", 0, "text_size")]),
}
