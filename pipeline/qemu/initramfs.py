"""The guest's initramfs: busybox, ``/init``, ``/modlist`` and the modules.

Written as a gzip-compressed cpio archive in the "newc" format the kernel
unpacks (init/initramfs.c; format in
Documentation/driver-api/early-userspace/buffer-format.rst).  Every header
field is fixed (uid/gid 0, mtime 0, inodes numbered in order) and gzip's
own timestamp is 0, so the same inputs give a byte-identical image.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pipeline.qemu.modules import read_ko
from traces.io import atomic_path

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"

#: (path in the archive, mode, data or None, (rdev major, minor))
Entry = tuple[str, int, bytes | None, tuple[int, int]]


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_entry(name: str, mode: int, data: bytes = b"", ino: int = 0,
               nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc record: 110-byte ASCII-hex header, NUL-terminated name, data, each padded to 4."""
    raw = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
    # c_ino c_mode c_uid c_gid c_nlink c_mtime c_filesize c_devmajor c_devminor
    # c_rdevmajor c_rdevminor c_namesize c_check
    header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    return header + raw + _pad4(len(header) + len(raw)) + data + _pad4(len(data))


def write_newc(entries: Iterable[Entry]) -> bytes:
    """A whole newc archive (uncompressed) of ``entries``, with the trailer."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        nlink = 2 if stat.S_ISDIR(mode) else 1
        out += newc_entry(name, mode, data or b"", ino=ino, nlink=nlink, rdev=rdev)
    out += newc_entry(TRAILER, 0)
    return bytes(out)


def guest_init() -> bytes:
    """The guest's ``/init`` script (package data ``pipeline/qemu/init.sh``)."""
    return resources.files("pipeline.qemu").joinpath("init.sh").read_bytes()


def initramfs_entries(busybox: Path, moddir: Path, modules: list[str]) -> list[Entry]:
    """Entries of the guest image; ``modules`` are paths relative to ``moddir``, in load order.

    Compressed modules are stored decompressed (busybox insmod reads plain ELF).
    """
    dirs = {"bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"}
    files: list[Entry] = []
    modlist = []
    for rel in modules:
        plain = rel[: -len(".xz")] if rel.endswith(".xz") else rel
        modlist.append(plain)
        parts = Path("lib/modules", plain).parts
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        files.append((f"lib/modules/{plain}", 0o100644, read_ko(moddir / rel), (0, 0)))
    entries: list[Entry] = [(d, 0o40755, None, (0, 0)) for d in sorted(dirs)]
    # /dev/console (char 5:1): PID 1's stdin/stdout before devtmpfs is mounted
    entries.append(("dev/console", stat.S_IFCHR | 0o600, None, (5, 1)))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes(), (0, 0)))
    entries.append(("init", 0o100755, guest_init(), (0, 0)))
    entries.append(("modlist", 0o100644, "".join(f"{m}\n" for m in modlist).encode(), (0, 0)))
    return entries + files


def build_initramfs(out: Path, busybox: Path, moddir: Path, modules: list[str]) -> Path:
    """Write the gzip-compressed newc initramfs to ``out`` atomically; returns ``out``."""
    archive = write_newc(initramfs_entries(busybox, moddir, modules))
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(archive)
    return out
