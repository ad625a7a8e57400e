"""Import tracefs / ``trace-cmd report`` text (and guest serial logs) as a trace.

Line format (``kernel/trace/trace_output.c``, ``trace-cmd report``)::

    <task>-<pid> [(<tgid>)] [<cpu>] [<flags>] <secs>.<frac>: <event>: <fields>

Task names may hold spaces and dashes or be ``<...>``; the flag column is 4
or 5 characters or absent; ``cpus=N`` headers, ``#`` comments, ``=>`` stack
lines and kernel-log lines interleaved in a serial console are skipped and
counted.  Every line lands in exactly one bucket of the returned
:class:`ImportSummary`: used (by event), unused (by reason), or malformed
(a line that starts like an event but does not parse, or a known event with
fields that do not parse), reported with its 1-based line number.

The serial logs of ``shared/groundtruth/qemu/init.sh`` also carry, outside
the trace dump, ``GT init-uptime ... kernel <release> cpus <n>`` and
``GT vmstat-before``/``GT meminfo-before`` lines: they give the machine's
starting state for the metadata, and the kernel's ``Memory: a/bK`` line its
RAM.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from traces.errors import TraceError
from traces.importers.bpftool import BpfProg, case_metadata, load_bpf_progs, pack_used_estimate
from traces.importers.kernel import KernelEventConverter, SPLIT_KINDS
from traces.io import atomic_path, write_trace

#: How many malformed lines are kept verbatim (all are counted).
MAX_MALFORMED_KEPT = 100

_EVENT = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[-\d]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s:]{4,5})\s+)?(?P<secs>\d+)\.(?P<frac>\d{1,9}):\s+"
    r"(?P<event><[^>]*>|[\w.-]+)(?::\s?(?P<body>.*)|\s*)$")
#: A line that begins like an event line; if _EVENT does not match it, it is malformed.
_EVENT_PREFIX = re.compile(r"^\s*\S.*?-\d+\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]")
_KV = re.compile(r"(\w+)[=:]\s?(\S+)")
_FUNC = re.compile(r"^([\w.$]+)")
#: qemu bpfload.c console line with the case's JIT size.
_GT_BPF_CASE = re.compile(r"GT bpf N=(\d+) K=(\d+) loaded=\d+ .*?\bjited_len=(\d+)")


#: Tracepoint (as "GT enabled:" lists it) -> the init.sh kprobes it makes redundant.
_DUPLICATES = {
    "vmalloc:alloc_vmap_area": ("alloc_va", "alloc_va_ret"),
    "vmalloc:free_vmap_area_noflush": (),       # free_va kept: its va_end sizes the tracepoint's area
    "vmalloc:purge_vmap_area_lazy": ("purge", "flush_krange"),
    "csd:csd_queue_cpu": ("on_each_cpu",),
}


#: Events still followed while the tracer sets itself up (vmap areas and purges).
_VMAP_EVENTS = frozenset(("alloc_vmap_area", "free_vmap_area_noflush", "purge_vmap_area_lazy",
                          "alloc_va", "alloc_va_ret", "free_va", "free_node", "purge", "flush_krange"))


class Malformed(ValueError):
    """A line of a known event whose fields do not parse (the documented error)."""


@dataclass
class ImportSummary:
    """What an import used and skipped.

    ``used`` counts lines by event name, ``unused`` by reason (never silently
    dropped), ``malformed`` keeps ``(line number, reason, line)`` for the
    first :data:`MAX_MALFORMED_KEPT`; ``n_malformed`` counts all.
    """

    trace: Path | None = None
    observed: Path | None = None
    n_lines: int = 0
    n_events: int = 0
    n_observations: int = 0
    used: Counter = field(default_factory=Counter)
    unused: Counter = field(default_factory=Counter)
    malformed: list[tuple[int, str, str]] = field(default_factory=list)
    n_malformed: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def add_malformed(self, lineno: int, reason: str, line: str) -> None:
        self.n_malformed += 1
        if len(self.malformed) < MAX_MALFORMED_KEPT:
            self.malformed.append((lineno, reason, line[:200]))

    def __str__(self) -> str:
        out = [f"{self.n_lines} lines -> {self.n_events} events, {self.n_observations} observations"]
        if self.trace:
            out[0] += f" ({self.trace})"
        out.append("used: " + ", ".join(f"{k} {v}" for k, v in self.used.most_common()))
        if self.unused:
            out.append("unused: " + ", ".join(f"{k} {v}" for k, v in self.unused.most_common()))
        if self.totals:
            out.append("observed: " + ", ".join(f"{k} {v}" for k, v in self.totals.items()))
        if self.n_malformed:
            out.append(f"malformed: {self.n_malformed} lines, e.g.")
            out += [f"  line {n}: {why}: {line!r}" for n, why, line in self.malformed[:10]]
        return "\n".join(out)


def _int(s: str) -> int:
    """Decimal or 0x-hex, non-negative, at most 64 bits."""
    try:
        v = int(s, 16) if s[:2] in ("0x", "0X") else int(s, 10)
    except ValueError:
        raise Malformed(f"not a number: {s[:40]!r}") from None
    if not 0 <= v < 1 << 64:
        raise Malformed(f"out of range: {s[:40]!r}")
    return v


def _fields(body: str, *names: str) -> list[int]:
    kv = dict(_KV.findall(body))
    missing = [n for n in names if n not in kv]
    if missing:
        raise Malformed(f"missing field {missing[0]!r}")
    return [_int(kv[n]) for n in names]


def _align(body: str) -> int:
    """``alloc_vmap_area``'s ``align`` (bytes; a page when the line has none)."""
    return _fields(body, "align")[0] if "align=" in body else 4096


def _func(body: str, key: str) -> str:
    m = re.search(key + r"=(\S+)", body)
    if not m or not (f := _FUNC.match(m.group(1))):
        raise Malformed(f"missing field {key!r}")
    return f.group(1)


class FtraceParser:
    """Feeds one text line at a time into a :class:`KernelEventConverter`."""

    def __init__(self, conv: KernelEventConverter, summary: ImportSummary) -> None:
        self.conv, self.s = conv, summary
        self.meta: dict[str, str] = {}
        self.skip: set[str] = set()      # kprobe events duplicating an enabled tracepoint
        self.free_tracepoint = False     # free_va kprobes only size the tracepoint's frees
        #: (pid, va_start) -> (va_end, ts) of a free_va kprobe whose tracepoint line follows
        self._free_end: dict[tuple[int, int], tuple[int | None, int]] = {}
        #: init.sh guest logs: the tracer is still setting itself up until its "GT start" marker
        self.setup = False

    def line(self, lineno: int, line: str) -> None:
        self.s.n_lines += 1
        stripped = line.strip()
        if not stripped:
            self.s.unused["blank"] += 1
            return
        if stripped.startswith("#"):
            if (m := re.search(r"#P:(\d+)", stripped)):        # "# entries-in-buffer/... #P:2"
                self.meta.setdefault("nr_cpus", m.group(1))
            self.s.unused["comment"] += 1
            return
        if stripped.startswith("=>"):
            self.s.unused["stack trace line"] += 1
            return
        m = _EVENT.match(line)
        if m is None:
            if _EVENT_PREFIX.match(line):
                self.s.add_malformed(lineno, "event line does not parse", line)
            else:
                self._other(stripped)
            return
        try:
            used = self._event(m)
        except Malformed as e:
            self.s.add_malformed(lineno, f"{m.group('event')}: {e}", line)
            return
        if isinstance(used, str):
            self.s.unused[used] += 1
        elif used:
            self.s.used[m.group("event")] += 1
        else:
            self.s.unused[f"event {m.group('event')}"] += 1

    def _other(self, s: str) -> None:
        """Headers and serial-console lines: some carry the starting state."""
        if s.startswith("cpus="):
            if s[5:].isdigit():
                self.meta.setdefault("nr_cpus", s[5:])
            self.s.unused["header"] += 1
            return
        if s.startswith("GT "):
            parts = s.split()
            if s.startswith("GT init-uptime") and "kernel" in parts and "cpus" in parts:
                i, j = parts.index("kernel"), parts.index("cpus")
                if i + 1 < len(parts) and j + 1 < len(parts) and parts[j + 1].isdigit():
                    self.meta["kernel_release"] = parts[i + 1]
                    self.meta["nr_cpus"] = parts[j + 1]
            elif s.startswith("GT vmstat-before") and len(parts) == 4 and parts[3].isdigit():
                self.conv.vmstat_start(parts[2], int(parts[3]))
            elif (m := _GT_BPF_CASE.match(s)) and m.group(3):
                self.conv.case_sizes[(int(m.group(1)), int(m.group(2)))] = int(m.group(3))
                if (a := re.search(r"jit_addr0=0x([0-9a-f]+)", s)) and "bpf_pack_used_bytes" not in self.meta:
                    # where the run's first program landed: the packs' starting state
                    self.meta["bpf_pack_used_bytes"] = str(pack_used_estimate(int(a.group(1), 16),
                                                                              int(m.group(3))))
            elif s.startswith("GT enabled:"):
                # init.sh prints this before its trace dump; everything the dump holds before
                # "GT start" is the tracer arming itself (see _event).
                self.setup = self.conv.setup = True
                # Guests >= 6.2 trace both; the tracepoints win (exact num_purged, per-CPU CSDs).
                for tracepoint, kprobes in _DUPLICATES.items():
                    if tracepoint in parts:
                        self.skip.update(kprobes)
                self.free_tracepoint = "vmalloc:free_vmap_area_noflush" in parts
                self.conv.purge_entries = "gt:purge" in parts and "purge" not in self.skip
                self.conv.purge_starts = "gt:purge" in parts and "purge" in self.skip
            elif s.startswith("GT meminfo-before") and len(parts) >= 4 and parts[3].isdigit():
                self.meta[parts[2].rstrip(":")] = parts[3]
            self.s.unused["ground-truth log line"] += 1
            return
        if (m := re.search(r"\] Memory: \d+K/(\d+)K available", s)):
            self.meta["mem_total_bytes"] = str(int(m.group(1)) * 1024)
        self.s.unused["not a trace line"] += 1

    def _event(self, m: re.Match) -> bool | str:
        """Feed one event line: True if used, False if not, or the reason it is not."""
        c = self.conv
        ev, body = m.group("event"), m.group("body") or ""
        pid, cpu, task = int(m.group("pid")), int(m.group("cpu")), m.group("task").strip()
        if pid >= 1 << 32 or cpu >= 1 << 16:
            raise Malformed("pid or cpu out of range")
        frac = m.group("frac")
        ts = int(m.group("secs")) * 1_000_000_000 + int(frac.ljust(9, "0"))
        if ts >= 1 << 64:
            raise Malformed("timestamp out of range")
        if ev.startswith("<") or ev in self.skip:   # <stack trace>; kprobe duplicates
            if ev == "purge":                       # still when the purge took its snapshot
                c.purge_started(pid, ts)
            return False
        if self.setup:
            # init.sh enables the events one after another, then writes "GT start": what comes
            # before is the tracer's own work (kprobe instruction pages, the kprobe optimizer's
            # text_poke_bp batches), seen only by the events already enabled (on 6.12 the
            # do_sync_core rounds of the first batches precede the live csd tracepoint).  Only
            # the vmap areas are followed, for the starting state (KernelEventConverter.setup).
            if ev in ("tracing_mark_write", "print") and body.rstrip().endswith("GT start"):
                self.setup = c.setup = False
            elif ev in ("tracing_mark_write", "print") and body.rstrip().endswith("GT vmap-pools-drained"):
                c.mark(ts, cpu, pid, "GT vmap-pools-drained")
                return True
            elif ev not in _VMAP_EVENTS:
                return "tracer setup before GT start"
        if ev not in ("csd_queue_cpu", "ipi_send_cpu", "ipi_send_cpumask"):
            c.other_event(cpu)
        if ev in ("tracing_mark_write", "print"):
            c.mark(ts, cpu, pid, body.split(": ", 1)[-1] if body.startswith("tracing_mark_write") else body)
        elif ev == "alloc_vmap_area":                      # 6.18: va_start printed in decimal
            va, size, vstart, failed = _fields(body, "va_start", "size", "vstart", "failed")
            if failed:
                return False
            c.alloc(ts, cpu, pid, task, va, size, vstart, _align(body))
        elif ev == "free_vmap_area_noflush":
            va, nr_lazy = _fields(body, "va_start", "nr_lazy")
            va_end, began = self._free_end.pop((pid, va), (None, None))
            c.free(ts, cpu, pid, task, va, nr_lazy, va_end=va_end, began=began)
        elif ev == "purge_vmap_area_lazy":
            start, end, purged = _fields(body, "start", "end", "num_purged")
            c.purge(ts, pid, task, purged > 0, start, end, purged)
        elif ev == "csd_queue_cpu":
            c.csd_queue(ts, cpu, pid, task, _fields(body, "cpu")[0], _func(body, "func"))
        elif ev == "alloc_va":                             # kprobes of qemu/init.sh (6.1)
            size, vstart = _fields(body, "size", "vstart")
            c.alloc_entry(pid, size, vstart, _align(body))
        elif ev == "alloc_va_ret":
            if not c.alloc_return(ts, cpu, pid, task, _fields(body, "va_start")[0]):
                raise Malformed("kretprobe without its alloc_va entry")
        elif ev == "unmap_aliases":
            c.unmap_aliases(pid, _fields(body, "flush_dmap")[0])
        elif ev == "free_node":                          # 6.9+: encode_vn_id in vmap_area.flags
            va, flags = _fields(body, "va_start", "flags")
            c.free_node(va, (flags >> 8) - 1 if flags >> 8 else None)
        elif ev == "free_va":
            va_end = _fields(body, "va_end")[0] if "va_end=" in body else None
            va = _fields(body, "va_start")[0]
            if self.free_tracepoint:        # the tracepoint line that follows is the free
                self._free_end[(pid, va)] = (va_end, ts)
            else:
                c.free(ts, cpu, pid, task, va, va_end=va_end)
        elif ev == "purge":
            c.purge_entry(ts, pid, task, *_fields(body, "start", "end"))
        elif ev == "flush_krange":
            c.kernel_range_flush_entry(ts, pid, task, *_fields(body, "start", "end"))
        elif ev == "on_each_cpu":
            c.on_each_cpu(ts, pid, task, _func(body, "func"))
        elif ev == "flush_all":
            # __split_large_page's flush_tlb_all runs under pgd_lock and cpa_lock: preempt depth 2
            # (the 5-character flag column's 4th); CPA's own full flush runs outside both
            flags = m.group("flags") or ""
            if len(flags) != 5 or flags[3] != "2":
                return False
            c.split_flush(pid, task)
        elif ev in ("set_ro", "set_x", "set_nx", "set_rw", "set_rox"):
            addr, npages = _fields(body, "addr", "npages")
            c.set_memory(ts, cpu, pid, ev, addr, npages)
        elif ev == "module_alloc" and "type=" in body:       # 6.4+: the probe sits on execmem_alloc
            return c.execmem_alloc_entry(ts, cpu, pid, *_fields(body, "type", "size"))
        elif ev == "module_alloc_ret" and "execmem_alloc" in body:
            return c.execmem_alloc_return(pid, _fields(body, "ret")[0])
        elif ev == "module_memfree" and "execmem_free" in body:
            return c.execmem_free(ts, cpu, pid, task, _fields(body, "addr")[0])
        elif ev == "text_poke_bp_batch":
            # 7.2's probe sits on smp_text_poke_batch_finish, without nr (see text_poke).
            c.text_poke(ts, cpu, pid, task, _fields(body, "nr")[0] if "nr=" in body else None)
        elif ev == "module_load":
            name = body.split()
            if not name:
                raise Malformed("no module name")
            c.module_load(ts, cpu, pid, name[0])
        elif ev == "module_free":
            name = body.split()
            if not name:
                raise Malformed("no module name")
            c.module_free(ts, cpu, pid, name[0])
        else:
            return False
        return True


def _lines(source: str | os.PathLike | Iterable[str]) -> Iterable[str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise TraceError("no such file", file=str(path), hint="check the path")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as raw:
            yield from io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    else:
        yield from source


def observed_path(trace: str | os.PathLike) -> Path:
    """``<dir>/<name>.observed.parquet`` beside ``<dir>/<name>.parquet``."""
    trace = Path(trace)
    return trace.with_name(trace.with_suffix("").name + ".observed.parquet")


def import_ftrace(source: str | os.PathLike | Iterable[str], out: str | os.PathLike, *,
                  bpf_progs: str | os.PathLike | list[BpfProg] | None = None,
                  metadata: dict | None = None, own_pid: int | None = None,
                  allow_empty: bool = False) -> ImportSummary:
    """Import ftrace text into ``out`` (trace) and its ``.observed.parquet``.

    ``bpf_progs``: a ``bpftool prog show --json`` / ground-truth JSON path,
    or a list of :class:`BpfProg`.  ``metadata`` overrides what the log
    itself tells (``nr_cpus``, ``DirectMap*``, ...); ``direct_map_level*_start``
    / ``_end`` there are vmstat counters around the trace, and
    ``bpf_pack_used_bytes`` the starting pack occupancy (a warmup event,
    see :mod:`traces.importers.kernel`).  ``own_pid``: count only this task
    and kernel threads as the workload.  Raises
    :class:`TraceError` when no trace line at all was found (unless
    ``allow_empty``); malformed lines are counted, never raised.
    """
    progs, meta_in = bpf_progs, {}
    if isinstance(bpf_progs, (str, os.PathLike)):
        progs, meta_in = load_bpf_progs(bpf_progs), case_metadata(bpf_progs)
    meta_in.update({k: str(v) for k, v in (metadata or {}).items()})
    summary = ImportSummary()
    conv = KernelEventConverter(own_pid=own_pid, bpf_progs=progs)
    parser = FtraceParser(conv, summary)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<lines>"
    for lineno, line in enumerate(_lines(source), 1):
        parser.line(lineno, line.rstrip("\n"))
    used = int(meta_in.get("bpf_pack_used_bytes") or parser.meta.get("bpf_pack_used_bytes") or 0)
    if used:
        conv.add_warmup(BpfProg(None, "pack occupancy at start", used))
    if not summary.used and not allow_empty:
        raise TraceError("no trace events found", file=name,
                         hint="pass the text of a tracefs 'trace' file, 'trace-cmd report' output "
                              "or a ground-truth serial log")
    for k in SPLIT_KINDS:   # whole-run vmstat deltas (record, case JSON): charged to no op
        start, end = meta_in.pop(f"{k}_start", None), meta_in.pop(f"{k}_end", None)
        if start is not None and end is not None:
            conv.observable.add(k)
            if int(end) != int(start):
                conv.observe(conv.last_ts, k, int(end) - int(start), row=None)
    trace, observed = conv.finish()
    summary.unused.update(conv.unused)
    meta = {"source": "imported:ftrace", **parser.meta, **meta_in}
    if "mem_total_bytes" not in meta and all(f"DirectMap{s}" in meta for s in ("4k", "2M", "1G")):
        # Simplification: the direct map spans all RAM (plus mapped holes).
        meta["mem_total_bytes"] = str(sum(int(meta[f"DirectMap{s}"]) for s in ("4k", "2M", "1G")) * 1024)
    summary.totals = conv.totals(observed)
    meta.update({f"observed.{k}": v for k, v in summary.totals.items()})
    meta["observed_kinds"] = ",".join(sorted(conv.observable))
    if conv.n_warmup:
        meta["warmup_events"] = str(conv.n_warmup)
    if busy := conv.vmalloc_busy():
        meta["vmalloc_busy"] = busy
    if busy := conv.module_busy():
        meta["module_busy"] = busy
    if pools := conv.vmap_pools():
        meta["vmap_pools"] = pools
    if cache := conv.execmem_cache():
        meta["execmem_cache"] = cache
    summary.metadata = meta
    out = Path(out)
    summary.trace = write_trace(out, trace, meta)
    summary.observed = observed_path(out)
    with atomic_path(summary.observed) as tmp:
        pq.write_table(observed, tmp, compression="zstd")
    summary.n_events, summary.n_observations = trace.num_rows, observed.num_rows
    return summary
