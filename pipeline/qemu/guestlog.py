"""The guest's own status lines in a serial log (not the trace: the importer reads that).

``/init`` (``pipeline/qemu/init.sh``) prints ``GT <what> ...`` lines at the
start of a console line; this reads what a run needs to be judged: did the
guest finish, which modules failed, did the trace buffer overrun, and the
machine state at start for the trace metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

TRACE_BEGIN = "=====GT TRACE BEGIN"
TRACE_END = "=====GT TRACE END"

_KV = re.compile(r"(\w+):?\s+(\d+)")


@dataclass
class GuestLog:
    kernel_release: str | None = None
    nr_cpus: int | None = None
    init_uptime_s: float | None = None
    unloaded_uptime_s: float | None = None   # all modules removed; the trace dump follows
    done_uptime_s: float | None = None
    loaded: int | None = None
    load_window_s: float | None = None   # guest seconds from first insmod to last
    insmod_failed: list[str] = field(default_factory=list)
    kprobes_failed: list[str] = field(default_factory=list)
    vmstat: dict[str, dict[str, int]] = field(default_factory=dict)    # phase -> counter -> value
    meminfo: dict[str, dict[str, int]] = field(default_factory=dict)   # phase -> field -> kB
    mem_total_kb: int | None = None
    buddyinfo: list[str] = field(default_factory=list)
    pagetypeinfo: list[str] = field(default_factory=list)
    trace_overrun: dict[str, int] = field(default_factory=dict)        # cpuN -> lost events
    trace_entries: dict[str, int] = field(default_factory=dict)        # cpuN -> entries in buffer
    trace_lines: int = 0
    trace_complete: bool = False
    panic: str | None = None

    def metadata(self) -> dict[str, object]:
        """Trace metadata keys (traces.schema.META_KEYS) this log can fill."""
        before = self.meminfo.get("before", {})
        return {
            "kernel_release": self.kernel_release,
            "nr_cpus": self.nr_cpus,
            "mem_total_bytes": self.mem_total_kb * 1024 if self.mem_total_kb is not None else None,
            **{k: before.get(k) for k in ("DirectMap4k", "DirectMap2M", "DirectMap1G")},
            "buddyinfo": "\n".join(self.buddyinfo) or None,
            "pagetypeinfo": "\n".join(self.pagetypeinfo) or None,
        }


def read_guest_log(lines: Iterable[str]) -> GuestLog:
    """Collect the ``GT`` status lines of a serial log (one pass, any size)."""
    g = GuestLog()
    in_trace = False
    for raw in lines:
        line = raw.rstrip("\r\n")
        if in_trace:
            if line.startswith(TRACE_END):
                in_trace, g.trace_complete = False, True
            else:
                g.trace_lines += 1
            continue
        if line.startswith(TRACE_BEGIN):
            in_trace = True
            continue
        if "Kernel panic" in line and g.panic is None:
            g.panic = line.strip()
        if not line.startswith("GT "):
            continue
        what, _, rest = line[3:].partition(" ")
        if what == "init-uptime":
            m = re.match(r"([\d.]+) kernel (\S+) cpus (\d+)", rest)
            if m:
                g.init_uptime_s, g.kernel_release, g.nr_cpus = float(m[1]), m[2], int(m[3])
        elif what == "done-uptime":
            g.done_uptime_s = float(rest)
        elif what == "unloaded":
            m = re.match(r"at ([\d.]+)", rest)
            g.unloaded_uptime_s = float(m[1]) if m else None
        elif what == "loaded":
            m = re.match(r"(\d+) modules in ([\d.]+) -> ([\d.]+)", rest)
            if m:
                g.loaded, g.load_window_s = int(m[1]), round(float(m[3]) - float(m[2]), 3)
        elif what == "insmod-fail":
            g.insmod_failed.append(rest)
        elif what == "kprobe" and rest.startswith("FAIL: "):
            g.kprobes_failed.append(rest[len("FAIL: "):])
        elif what.startswith(("vmstat-", "meminfo-")):
            kind, _, phase = what.partition("-")
            m = _KV.match(rest)
            if m:
                (g.vmstat if kind == "vmstat" else g.meminfo).setdefault(phase, {})[m[1]] = int(m[2])
        elif what == "memtotal":
            m = _KV.match(rest)
            g.mem_total_kb = int(m[2]) if m else None
        elif what == "buddyinfo":
            g.buddyinfo.append(rest)
        elif what == "pagetypeinfo":
            g.pagetypeinfo.append(rest)
        elif what.startswith("trace-stats"):
            # "trace-stats" is CPU 0 (the ground-truth format), "trace-stats-cpuN" any CPU
            cpu = what[len("trace-stats-"):] or "cpu0"
            entries = re.search(r"entries: (\d+)", rest)
            overrun = re.search(r"(?<!commit )overrun: (\d+)", rest)
            if entries:
                g.trace_entries[cpu] = int(entries[1])
            if overrun:
                g.trace_overrun[cpu] = int(overrun[1])
    return g
