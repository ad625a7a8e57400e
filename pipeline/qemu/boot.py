"""Boot the guest under QEMU and capture its serial console.

TCG (software emulation) only: KVM on the ground-truth host is kvm-pvm,
on which stock Debian guests hang after decompression
(shared/groundtruth/REPORT.md, "KVM").
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from traces.errors import PermtraceError

#: Kernel command line.  nokaslr: fixed direct-map and module addresses, so
#: traces from different boots line up.  no5lvl: with ``-cpu max`` the guest
#: would otherwise use LA57 5-level paging (direct map at 0xff11...), not the
#: 4-level layout the emulator models.  panic=-1 with -no-reboot: a dead
#: guest ends QEMU at once instead of hanging until the timeout.
KERNEL_ARGS = ("console=ttyS0", "earlyprintk=serial,ttyS0", "nokaslr", "no5lvl",
               "panic=-1", "printk.time=1")


def qemu_command(vmlinuz: Path, initrd: Path, cpus: int, mem: str = "4G",
                 cpa: bool = True, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The ``qemu-system-x86_64`` argv: TCG, serial console on stdout, no network."""
    append = " ".join((*KERNEL_ARGS, *(("gt_cpa",) if cpa else ()), *extra_args))
    return [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", mem, "-smp", str(cpus),
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", append,
        "-nographic", "-no-reboot", "-nic", "none",
    ]


@dataclass
class BootResult:
    returncode: int
    wall_s: float
    timed_out: bool


def boot(cmd: list[str], log: Path, timeout_s: float) -> BootResult:
    """Run ``cmd`` with stdout+stderr into ``log``; kill it after ``timeout_s`` seconds.

    QEMU runs in its own session so that a timeout kills it and nothing else.
    """
    t0 = time.monotonic()
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise PermtraceError(f"cannot start {cmd[0]} ({e}) "
                                 f"(fix: apt-get install -y --no-install-recommends qemu-system-x86)") from None
        try:
            rc = proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            timed_out = True
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return BootResult(rc, time.monotonic() - t0, timed_out)
