"""Record a live host: tracepoints + bpf(2) enumeration + /proc snapshots -> trace.

``Recorder`` owns everything it changes and changes nothing else: a private
tracefs instance ``instances/permtrace-<pid>`` (its own buffer, events and
``trace_clock``; the top-level tracer, ``tracing_on``, ``set_event`` and
kprobes are never written), and, when tracefs was not mounted, a temporary
mount.  Both are undone in ``stop()``, which runs from ``finally`` and from
SIGINT/SIGTERM handlers (they raise :class:`Interrupted` into the main
thread, so the same ``finally`` restores).  Only SIGKILL can leave the
instance behind; the next ``permtrace record`` removes stale
``permtrace-<pid>`` instances whose process is gone.

The instance uses ``trace_clock=boot`` so trace timestamps and
``bpf_prog_info.load_time`` (``ktime_get_boottime_ns``) share one clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from traces import bpfload
from traces.errors import PermtraceError
from traces.importers.bpftool import BpfProg
from traces.importers.ftrace import ImportSummary, import_ftrace

#: Tracepoints enabled when the kernel has them (6.18: all but module/* here).
EVENTS = (
    "vmalloc/alloc_vmap_area", "vmalloc/free_vmap_area_noflush", "vmalloc/purge_vmap_area_lazy",
    "csd/csd_queue_cpu", "ipi/ipi_send_cpu", "ipi/ipi_send_cpumask",
    "module/module_load", "module/module_free",
)
REQUIRED = ("vmalloc/alloc_vmap_area", "vmalloc/free_vmap_area_noflush", "vmalloc/purge_vmap_area_lazy")
PROBE_SETTLE_S = 0.3
SPLIT_COUNTERS = ("direct_map_level2_splits", "direct_map_level3_splits",
                  "direct_map_level2_collapses", "direct_map_level3_collapses")
#: Host tracing state files compared before/after by the tests.
STATE_FILES = ("current_tracer", "tracing_on", "set_event", "trace_clock", "buffer_size_kb",
               "kprobe_events", "set_ftrace_filter")


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived while recording (tracing is restored before it propagates)."""


def tracing_state(root: str | os.PathLike) -> dict[str, str]:
    """The host's tracing state: top-level control files and the instance list."""
    root = Path(root)
    state = {}
    for name in STATE_FILES:
        try:
            state[name] = (root / name).read_text()
        except OSError:
            state[name] = "<absent>"
    try:
        state["instances"] = " ".join(sorted(p.name for p in (root / "instances").iterdir()))
    except OSError:
        state["instances"] = "<absent>"
    return state


def vmstat() -> dict[str, int]:
    out = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        k, _, v = line.partition(" ")
        if k in SPLIT_COUNTERS:
            out[k] = int(v)
    return out


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` values in kB."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, _, v = line.partition(":")
        if v.split():
            out[k] = int(v.split()[0])
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_metadata() -> dict[str, str]:
    """Starting state for the trace metadata (architecture.md section 2)."""
    mi = meminfo()
    meta = {"nr_cpus": str(os.cpu_count() or 1), "kernel_release": os.uname().release,
            "mem_total_bytes": str(mi.get("MemTotal", 0) * 1024),
            "buddyinfo": _read("/proc/buddyinfo"), "pagetypeinfo": _read("/proc/pagetypeinfo")}
    for k in ("DirectMap4k", "DirectMap2M", "DirectMap1G"):
        if k in mi:
            meta[k] = str(mi[k])
    return meta


def _is_tracefs(path: Path) -> bool:
    return (path / "instances").is_dir() and (path / "trace_marker").exists()


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`Interrupted` for the duration."""
    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Recorder:
    """A private tracefs instance recording the workload events; see the module doc.

    Use as a context manager; ``mark(text)`` writes a trace_marker line,
    ``poll_bpf()`` notes programs loaded/freed since the last call,
    ``finish(out)`` stops tracing and imports the trace.
    """

    def __init__(self, tracefs: str | os.PathLike | None = None, buf_kb: int = 65536) -> None:
        if os.geteuid() != 0:
            raise PermtraceError("recording needs root (tracefs and bpf(2) program enumeration); "
                                 "run it with sudo")
        self.buf_kb = buf_kb
        self._tracefs_arg = Path(tracefs) if tracefs else None
        self.root: Path | None = None
        self.inst: Path | None = None
        self._mounted: Path | None = None
        self._marker: int | None = None
        self.events: list[str] = []
        self.known_ids: set[int] = set()
        self.pack_used = 0
        self.progs: dict[int, BpfProg] = {}
        self.start_vmstat: dict[str, int] = {}
        self.start_meta: dict[str, str] = {}

    # ---------------------------------------------------------------- setup
    def _find_tracefs(self) -> Path:
        if self._tracefs_arg is not None:
            if not _is_tracefs(self._tracefs_arg):
                raise PermtraceError(f"{self._tracefs_arg} is not a tracefs mount (no instances/ "
                                     "or trace_marker); fix: mount -t tracefs nodev "
                                     f"{self._tracefs_arg}, or omit --tracefs")
            return self._tracefs_arg
        for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
            if _is_tracefs(p):
                return p
        tmp = Path(tempfile.mkdtemp(prefix="permtrace-tracefs-"))
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0 or not _is_tracefs(tmp):
            tmp.rmdir()
            raise PermtraceError(f"tracefs is not mounted and mounting it failed ({r.stderr.strip()}); "
                                 "fix: a kernel with CONFIG_TRACING, then "
                                 "mount -t tracefs nodev /sys/kernel/tracing")
        self._mounted = tmp
        return tmp

    def _w(self, name: str, value: str) -> None:
        (self.inst / name).write_text(value)

    def _remove_stale(self) -> None:
        for p in (self.root / "instances").glob("permtrace-*"):
            pid = p.name.rpartition("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    p.rmdir()
                except OSError:
                    pass

    def start(self) -> None:
        self.root = self._find_tracefs()
        bpfload.check_bpf_available()
        self._remove_stale()
        missing = [e for e in REQUIRED if not (self.root / "events" / e).is_dir()]
        if missing:
            raise PermtraceError(f"this kernel has no {', '.join(missing)} tracepoints (added in 6.2+); "
                                 "fix: record such kernels with kprobes under QEMU "
                                 "(permtrace groundtruth qemu) or import an ftrace text of them")
        self.inst = self.root / "instances" / f"permtrace-{os.getpid()}"
        self.inst.mkdir()
        self._w("tracing_on", "0")
        self._w("buffer_size_kb", str(self.buf_kb))
        self._w("trace_clock", "boot")
        for e in EVENTS:
            if (self.inst / "events" / e).is_dir():
                self._w(f"events/{e}/enable", "1")
                self.events.append(e)
        # Starting state of the JIT packs: how full the pack a new program would land in is
        # (programs of all kinds, with or without IDs, trampolines).  The probe program's own
        # deferred free (RCU + kworker) is waited out before tracing starts.
        self.pack_used = bpfload.probe_pack_used()
        time.sleep(PROBE_SETTLE_S)
        self.known_ids = set(bpfload.prog_ids())      # loaded before: their frees are not traced
        self.start_meta = machine_metadata()
        self.start_vmstat = vmstat()
        self._marker = os.open(self.inst / "trace_marker", os.O_WRONLY)
        self._w("tracing_on", "1")

    def stop(self) -> None:
        """Undo everything ``start`` did; safe to call twice, and after a partial start."""
        if self._marker is not None:
            os.close(self._marker)
            self._marker = None
        try:
            if self.inst is not None and self.inst.exists():
                try:
                    self._w("tracing_on", "0")
                except OSError:
                    pass
                self.inst.rmdir()        # removes the instance's events and buffer too
            self.inst = None
        finally:
            if self._mounted is not None:
                subprocess.run(["umount", str(self._mounted)], check=False, capture_output=True)
                self._mounted.rmdir()
                self._mounted = None

    def __enter__(self) -> Recorder:
        self._signals = _signals_raise()
        self._signals.__enter__()
        try:
            self.start()
        except BaseException:
            self.stop()
            self._signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._signals.__exit__(*exc)

    # ---------------------------------------------------------------- during
    def mark(self, text: str) -> None:
        os.write(self._marker, text.encode())

    def poll_bpf(self) -> None:
        """Note programs loaded since the last poll and those gone (free time = now).

        A program loaded and freed between two polls is missed: poll often.
        """
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        ids = set(bpfload.prog_ids())
        for pid in ids - self.known_ids - set(self.progs):
            info = bpfload.info_by_id(pid)
            if info is not None:
                self.progs[pid] = BpfProg(pid, info.name, info.jited_prog_len, load_time_ns=info.load_time)
        for pid, p in self.progs.items():
            if p.free_time_ns is None and pid not in ids:
                self.progs[pid] = BpfProg(p.id, p.name, p.bytes_jited, load_time_ns=p.load_time_ns,
                                          free_time_ns=now)

    def finish(self, out: str | os.PathLike, *, bpf_progs: list[BpfProg] | None = None,
               own_pid: int | None = None, source: str | None = None) -> ImportSummary:
        """Stop tracing, snapshot, and import the instance's trace into ``out``."""
        self._w("tracing_on", "0")
        end = vmstat()
        meta = dict(self.start_meta)
        meta["source"] = source or f"recorded:{meta['kernel_release']}"
        meta["recorded_events"] = ",".join(self.events)
        meta["bpf_pack_used_bytes"] = str(self.pack_used)
        for k, v in self.start_vmstat.items():
            meta[f"{k}_start"], meta[f"{k}_end"] = str(v), str(end.get(k, v))
        lost = self.overrun()
        if lost:
            meta["lost_events"] = str(lost)
        progs = bpf_progs if bpf_progs is not None else sorted(self.progs.values(), key=lambda p: p.id)
        with open(self.inst / "trace", encoding="utf-8", errors="replace") as lines:
            summary = import_ftrace(lines, out, bpf_progs=progs, metadata=meta, own_pid=own_pid,
                                    allow_empty=True)
        if lost:
            summary.unused[f"events lost to ring-buffer overrun (raise buffer_size_kb={self.buf_kb})"] = lost
        return summary

    def overrun(self) -> int:
        """Events the instance's ring buffer dropped (``per_cpu/cpu*/stats``: overrun)."""
        lost = 0
        for stats in (self.inst / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("overrun", "dropped events") and value.strip().isdigit():
                    lost += int(value)
        return lost


def record(out: str | os.PathLike, duration: float | None = None, *,
           tracefs: str | os.PathLike | None = None, poll_s: float = 0.02,
           buf_kb: int = 65536) -> ImportSummary:
    """Record the whole host for ``duration`` seconds (None: until Ctrl-C/SIGTERM).

    A Ctrl-C or SIGTERM ends an open-ended recording normally (the trace is
    written); during a timed one it aborts it (nothing is written), and the
    host's tracing is restored either way.
    """
    with Recorder(tracefs, buf_kb) as rec:
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while deadline is None or time.monotonic() < deadline:
                rec.poll_bpf()
                time.sleep(poll_s)
        except Interrupted:
            if duration is not None:
                raise
        rec.poll_bpf()
        return rec.finish(out)


def groundtruth_bpf(out_dir: str | os.PathLike, n: int = 100, insns: int = 4096, *, classic: bool = False,
                    tracefs: str | os.PathLike | None = None, hold_s: float = 0.5, settle_s: float = 3.0,
                    ) -> tuple[ImportSummary, dict[str, float]]:
    """Load ``n`` real BPF programs of ``insns`` instructions, then free them, while recording.

    As ``shared/groundtruth/gt_bpf.py``: ``GT load i`` / ``GT close i``
    markers delimit each program, only this process and kernel threads
    count (program frees are deferred to kworkers via RCU), the programs
    are held ``hold_s`` then closed, and recording goes on ``settle_s``
    for the deferred frees.  eBPF sizes are read back with
    ``BPF_OBJ_GET_INFO_BY_FD``; classic sizes are estimated
    (:func:`traces.bpfload.classic_jit_estimate`).  Writes
    ``<out_dir>/<c|e>bpf_n<N>_k<K>.parquet`` and its observations; returns
    the import summary and timings (s).
    """
    if n < 1 or insns < 2:
        raise PermtraceError(f"need --n >= 1 and --insns >= 2, got {n} and {insns}")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if n + 256 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 256, hard), hard))
    name = f"{'cbpf' if classic else 'ebpf'}_n{n}_k{insns}"
    t = {}
    t0 = time.monotonic()
    with Recorder(tracefs) as rec:
        objs, progs = [], []
        try:
            rec.mark("GT start")
            t1 = time.monotonic()
            for i in range(n):
                rec.mark(f"GT load {i}")
                if classic:
                    objs.append(bpfload.ClassicFilter(insns))
                    progs.append(BpfProg(None, None, bpfload.classic_jit_estimate(insns), index=i))
                else:
                    fd = bpfload.load_ebpf(insns)
                    objs.append(fd)
                    info = bpfload.prog_info(fd)
                    progs.append(BpfProg(info.id, info.name, info.jited_prog_len, index=i))
            t["load_s"] = time.monotonic() - t1
            rec.mark("GT loaded")
            time.sleep(hold_s)
        finally:
            t2 = time.monotonic()
            for i, o in enumerate(objs):
                rec.mark(f"GT close {i}")
                o.close() if classic else os.close(o)
            t["close_s"] = time.monotonic() - t2
        rec.mark("GT settle")
        time.sleep(settle_s)
        rec.mark("GT end")
        t3 = time.monotonic()
        summary = rec.finish(Path(out_dir) / f"{name}.parquet", bpf_progs=progs, own_pid=os.getpid(),
                             source=f"groundtruth:bpf:{name}:{os.uname().release}")
        t["import_s"] = time.monotonic() - t3
    t["total_s"] = time.monotonic() - t0
    return summary, {k: round(v, 3) for k, v in t.items()}
