"""``permtrace groundtruth qemu``: one guest boot from package name to trace.

Steps (each timed, wall seconds): resolve the kernel package, download it
and busybox-static into the cache, unpack them, resolve module
dependencies, build the initramfs, boot QEMU (TCG) with the serial console
captured, check the guest finished cleanly, and import the serial log with
``traces.importers.ftrace.import_ftrace``.

Outputs in ``out``: ``serial.log.gz``, ``<name>.parquet`` and
``<name>.observed.parquet`` (from the importer), ``initrd.cpio.gz`` (to
boot the same guest again), ``groundtruth.json`` (command lines, timings,
guest status) and ``README.md``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.qemu import debian
from pipeline.qemu.boot import boot, qemu_command
from pipeline.qemu.guestlog import GuestLog, read_guest_log
from pipeline.qemu.initramfs import build_initramfs
from pipeline.qemu.modules import ModuleTree
from traces.errors import PermtraceError
from traces.io import atomic_path

BUSYBOX_PACKAGE = "busybox-static"
OUTPUT_NAMES = ("serial.log.gz", "groundtruth.json", "README.md", "initrd.cpio.gz")


def _tail(path: Path, n: int = 15) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as f:
        lines = f.read().splitlines()[-n:]
    return "\n".join("    " + line for line in lines)


def _serial_lines(path: Path) -> Iterator[str]:
    with gzip.open(path, "rt", errors="replace", newline="") as f:
        for line in f:
            yield line.rstrip("\r\n")


def check_guest(g: GuestLog, log: Path, timed_out: bool, timeout_s: float) -> None:
    """Raise PermtraceError unless the guest ran ``/init`` to the end with a complete trace."""
    where = f"serial log {log}"
    if timed_out:
        raise PermtraceError(f"the guest did not power off within {timeout_s:.0f} s ({where}); last lines:\n"
                             f"{_tail(log)}\n(fix: raise --timeout, or load fewer modules)")
    if g.panic and not g.trace_complete:
        raise PermtraceError(f"the guest kernel panicked: {g.panic} ({where}); last lines:\n{_tail(log)}")
    if g.init_uptime_s is None:
        raise PermtraceError(f"the guest never ran /init ({where}); last lines:\n{_tail(log)}")
    if not g.trace_complete:
        raise PermtraceError(f"the guest stopped before dumping its whole trace ({where}); last lines:\n"
                             f"{_tail(log)}")
    lost = {cpu: n for cpu, n in g.trace_overrun.items() if n}
    if lost:
        raise PermtraceError(f"the guest's trace buffer overran, events were lost: {lost} ({where}) "
                             f"(fix: raise --trace-buf-kb or load fewer modules)")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _readme(summary: dict) -> str:
    t = summary["timings_s"]
    g = summary["guest"]
    steps = ("download", "unpack", "modules", "initramfs", "boot", "import", "total")
    fails = "; ".join(f"`{f}`" for f in g["insmod_failed"]) or "none"
    imp = f"\n- **Import failed**: {summary['import_error']}" if "import_error" in summary else ""
    l2 = [g["vmstat"].get(phase, {}).get("direct_map_level2_splits") for phase in ("before", "loaded", "after")]
    return f"""# Ground truth: {summary['kernel_package']} under QEMU (TCG), {summary['cpus']} CPUs

Command: `{summary['command']}`

- Kernel: {summary['kernel_deb']}, release {g['kernel_release']}
- Modules requested: {' '.join(summary['modules_requested'])}
- Modules loaded ({g['loaded']} of {len(summary['modlist'])}, dependencies included, in order):
  {' '.join(Path(m).name for m in summary['modlist'])}
- insmod failures: {fails}
- Trace: `{summary['trace']}` ({g['trace_lines']} trace lines), observations `{summary['observed']}`{imp}
- vmstat direct_map_level2_splits: {l2[0]} before, {l2[1]} after loading, {l2[2]} after unloading

## Wall time (seconds, this host)

| {' | '.join(steps)} |
|{'---|' * len(steps)}
| {' | '.join(f"{t.get(s, 0.0):.1f}" for s in steps)} |

Guest clock (s since boot): /init at {g['init_uptime_s']}, all modules loaded within {g['load_window_s']},
all removed at {g['unloaded_uptime_s']}, trace printed over the serial port by {g['done_uptime_s']} (power-off).

Boot the same guest again:

```
{summary['qemu_command']}
```
"""


def groundtruth_qemu(kernel_deb: str, modules: list[str], cpus: int, out: Path, *,
                     cache: Path = debian.DEFAULT_CACHE, mem: str = "4G", timeout_s: float = 600.0,
                     cpa: bool = True, trace_buf_kb: int = 16384, name: str | None = None,
                     force: bool = False, command: str = "",
                     progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Boot ``kernel_deb`` with ``cpus`` CPUs, load and unload ``modules``, write the ground truth to ``out``.

    Returns the summary also written to ``out/groundtruth.json``.
    Raises PermtraceError for missing tools, unknown packages or modules,
    a guest that fails, and a trace the importer rejects.
    """
    if cpus < 1:
        raise PermtraceError(f"--cpus {cpus}: need at least 1 CPU")
    if not modules:
        raise PermtraceError("--modules is empty (fix: list module names, e.g. crc32c_generic,ext4,xfs)")
    debian.require_tools("qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb")
    existing = [p.name for p in (out.iterdir() if out.is_dir() else ())
                if p.name in OUTPUT_NAMES or p.name.endswith(".parquet")]
    if existing and not force:
        raise PermtraceError(f"{out} already holds {', '.join(sorted(existing))} "
                             f"(fix: pass --force to overwrite, or another --out)")
    timings: dict[str, float] = {}
    t_start = time.monotonic()

    def timed(step: str, fn, *args):
        t0 = time.monotonic()
        result = fn(*args)
        timings[step] = round(timings.get(step, 0.0) + time.monotonic() - t0, 3)
        return result

    package = timed("resolve", debian.resolve_kernel_package, kernel_deb)
    progress(f"kernel package {package}; cache {cache}")
    kernel_deb_path = timed("download", debian.download, package, cache)
    busybox_deb = timed("download", debian.download, BUSYBOX_PACKAGE, cache)
    kernel_tree = timed("unpack", debian.extract, kernel_deb_path, cache)
    busybox_tree = timed("unpack", debian.extract, busybox_deb, cache)
    trees = timed("download", debian.kernel_trees, package, kernel_deb_path, kernel_tree, cache)
    vmlinuz, moddir = debian.kernel_files(trees, package)
    busybox = busybox_tree / "bin" / "busybox"
    if not busybox.is_file():
        raise PermtraceError(f"{busybox_deb.name} holds no bin/busybox")

    tree = timed("modules", ModuleTree.scan, moddir)
    modlist, builtin = timed("modules", tree.load_order, modules,
                             kernel_tree.parent / f"{kernel_tree.name}.aliases.json")
    progress(f"{len(modlist)} modules to load (with dependencies)")
    out.mkdir(parents=True, exist_ok=True)
    initrd = timed("initramfs", build_initramfs, out / "initrd.cpio.gz", busybox, moddir, modlist)

    cmd = qemu_command(vmlinuz, initrd, cpus, mem=mem, cpa=cpa, extra_args=(f"gt_buf={trace_buf_kb}",))
    progress(f"booting {vmlinuz.name} under QEMU TCG with {cpus} CPUs (timeout {timeout_s:.0f} s)")
    raw_log = out / ".serial.log.partial"
    result = timed("boot", boot, cmd, raw_log, timeout_s)
    serial = out / "serial.log.gz"
    with atomic_path(serial) as tmp:
        with open(raw_log, "rb") as src, open(tmp, "wb") as f, \
                gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
            shutil.copyfileobj(src, gz)
    raw_log.unlink()
    guest = read_guest_log(_serial_lines(serial))
    check_guest(guest, serial, result.timed_out, timeout_s)

    name = name or f"{guest.kernel_release or vmlinuz.name.removeprefix('vmlinuz-')}-smp{cpus}"
    trace = out / f"{name}.parquet"
    summary = {
        "command": command,
        "kernel_package": package,
        "kernel_deb": kernel_deb_path.name,
        "busybox_deb": busybox_deb.name,
        "cache": str(cache),
        "cpus": cpus,
        "mem": mem,
        "cpa_kprobe": cpa,
        "modules_requested": modules,
        "modules_builtin": builtin,
        "modlist": modlist,
        "qemu_command": shlex.join(cmd),
        "qemu_returncode": result.returncode,
        "trace": trace.name,
        "observed": trace.with_suffix(".observed.parquet").name,
        "timings_s": timings,
        "guest": {k: v for k, v in dataclasses.asdict(guest).items() if k not in ("buddyinfo", "pagetypeinfo")},
    }
    try:
        progress(f"importing {serial.name} -> {trace.name}")
        imported = timed("import", _import, serial, trace, guest)
        # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs
        summary["importer"] = _jsonable({f.name: getattr(imported, f.name) for f in dataclasses.fields(imported)}
                                        if dataclasses.is_dataclass(imported) else repr(imported))
    except Exception as e:
        summary["import_error"] = str(e) if isinstance(e, PermtraceError) else f"{type(e).__name__}: {e}"
        raise
    finally:
        timings["total"] = round(time.monotonic() - t_start, 3)
        timings.setdefault("import", 0.0)
        _write_text(out / "groundtruth.json", json.dumps(summary, indent=2, default=str) + "\n")
        _write_text(out / "README.md", _readme(summary))
    return summary


def _jsonable(obj):
    """``obj`` with every mapping key turned into a string (JSON allows no tuple keys)."""
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else " ".join(map(str, k)) if isinstance(k, tuple) else str(k):
                _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (int, float, bool, type(None))) else str(obj)


def _import(serial: Path, trace: Path, guest: GuestLog):
    """Convert the serial log with the ftrace importer (writes the trace and its observations)."""
    try:
        from traces.importers.ftrace import import_ftrace
    except ImportError as e:
        raise PermtraceError(f"cannot import the serial log: traces.importers.ftrace is not available ({e}); "
                             f"the guest's log is kept at {serial}") from None
    metadata = {k: v for k, v in guest.metadata().items() if v is not None}
    return import_ftrace(_serial_lines(serial), trace, metadata=metadata)
