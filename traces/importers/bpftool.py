"""BPF program sizes (JIT image bytes) from ``bpftool prog show --json``.

bpftool entries carry ``id``, ``name`` and ``bytes_jited``; ``loaded_at``
is wall-clock time, which does not map onto a trace's clock, so programs
are matched to ``GT load i`` markers by load order (ID order) instead.

Also accepted, so that every shared ground-truth trace imports with its own
side file: a ground-truth case JSON (``gt_bpf.py``: a dict with ``progs``
entries carrying ``jited_len``), and the list ``permtrace record`` /
``permtrace groundtruth bpf`` write (entries with ``bytes_jited`` and,
optionally, ``index``, ``load_time_ns``, ``free_time_ns``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from traces.errors import TraceError


@dataclass(frozen=True)
class BpfProg:
    """One program: ``bytes_jited`` is the JIT image size (bytes).

    ``index`` is the load order within a ground-truth run (``GT load i``
    markers), ``load_time_ns``/``free_time_ns`` are on the trace clock
    (``CLOCK_BOOTTIME``, what ``bpf_prog_info.load_time`` uses) when known.
    """

    id: int | None
    name: str | None
    bytes_jited: int
    index: int | None = None
    load_time_ns: int | None = None
    free_time_ns: int | None = None


def _int(entry: dict, key: str, path: str, i: int, required: bool = False) -> int | None:
    v = entry.get(key)
    if v is None:
        if required:
            raise TraceError(f"program entry {i} has no {key!r}", file=path,
                             hint="pass 'bpftool prog show --json' output or a permtrace/gt_bpf JSON")
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TraceError(f"program entry {i}: {key}={v!r} is not a non-negative integer", file=path,
                         hint="fix or regenerate the JSON")
    return v


def load_bpf_progs(path: str | os.PathLike) -> list[BpfProg]:
    """Read a program list; raise :class:`TraceError` on anything unusable."""
    path = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TraceError("no such file", file=path, hint="check the --bpf-progs path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(f"not JSON ({e})", file=path,
                         hint="pass the output of 'bpftool prog show --json'") from None
    if isinstance(data, dict) and "progs" in data:       # gt_bpf.py case JSON
        data = data["progs"]
    if not isinstance(data, list):
        raise TraceError("expected a JSON list of programs", file=path,
                         hint="pass the output of 'bpftool prog show --json'")
    progs = []
    for i, e in enumerate(data):
        if not isinstance(e, dict):
            raise TraceError(f"program entry {i} is not an object", file=path, hint="fix the JSON")
        key = "bytes_jited" if "bytes_jited" in e else "jited_len"
        size = _int(e, key, path, i, required=True)
        name = e.get("name")
        progs.append(BpfProg(id=_int(e, "id", path, i), name=name if isinstance(name, str) else None,
                             bytes_jited=size, index=_int(e, "index", path, i),
                             load_time_ns=_int(e, "load_time_ns", path, i),
                             free_time_ns=_int(e, "free_time_ns", path, i)))
    if progs and all(p.id is not None and p.index is None for p in progs):
        # bpftool: IDs grow in load order, so the i-th program by ID is the trace's i-th load
        # (GT load i); pass only the traced run's programs (e.g. filter by name with jq).
        progs = [BpfProg(p.id, p.name, p.bytes_jited, index=i) for i, p in
                 enumerate(sorted(progs, key=lambda p: p.id))]
    return progs


def case_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Starting state and whole-run split deltas from a gt_bpf.py case JSON.

    Returns ``DirectMap4k/2M/1G`` (kB at start) and
    ``direct_map_level*_start``/``_end`` (vmstat counters); ``{}`` for a
    plain program list.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("snap_before"), dict):
        return {}
    before, delta = data["snap_before"], data.get("delta_total") or {}
    out = {k: str(before[k]) for k in ("DirectMap4k", "DirectMap2M", "DirectMap1G") if k in before}
    for k, v in before.items():
        if k.startswith("direct_map_level") and isinstance(v, int):
            out[f"{k}_start"], out[f"{k}_end"] = str(v), str(v + int(delta.get(k, 0)))
    progs = data.get("progs") or []
    if progs and isinstance(progs[0], dict) and isinstance(progs[0].get("jit_addr"), str):
        out["bpf_pack_used_bytes"] = str(pack_used_estimate(int(progs[0]["jit_addr"], 16),
                                                            progs[0].get("jited_len", 0)))
    return out


#: ``BPF_PROG_PACK_SIZE`` on x86-64 (2 MiB: kernel/bpf/core.c).
BPF_PROG_PACK_SIZE = 2 << 20


def pack_used_estimate(jit_addr: int, jited_len: int) -> int:
    """Bytes of the current ``bpf_prog_pack`` in use before a program that landed at ``jit_addr``.

    An estimate: it assumes the pack is 2 MiB-aligned, which holds for the
    first pack in an empty module range (``MODULES_VADDR`` is), and that the
    pack was filled in order (``bpf_prog_pack_alloc`` takes the first free
    run of 64-byte chunks).  0 for an image too big for a pack (its own area).
    """
    if not 0 < jited_len <= BPF_PROG_PACK_SIZE:
        return 0
    return jit_addr & (BPF_PROG_PACK_SIZE - 1) & ~63
