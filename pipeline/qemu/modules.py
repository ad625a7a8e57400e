"""Which ``.ko`` files to load, in which order, without depmod.

A Debian ``linux-image`` package ships the modules but not ``modules.dep``
or ``modules.alias`` (its postinst runs depmod), so the load order is
worked out here the way ``modprobe`` would (kmod's
``kmod_module_get_dependencies`` / softdep handling): from each module's
own ``.modinfo`` section, ``depends=`` (hard dependencies, loaded first)
and ``softdep=pre: … post: …``.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from traces.errors import PermtraceError

#: Module file suffixes understood (bookworm: plain; trixie and later: xz).
SUFFIXES = (".ko", ".ko.xz")


def module_name(path_or_name: str) -> str:
    """Kernel module name: file name without suffix, '-' read as '_' (as kmod does)."""
    name = os.path.basename(path_or_name)
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_ko(path: Path) -> bytes:
    """The ELF bytes of a module file, decompressed when it is ``.ko.xz``."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def modinfo(elf: bytes, where: str = "module") -> list[tuple[str, str]]:
    """``(key, value)`` pairs of the ``.modinfo`` section of an ELF64 little-endian module.

    ``.modinfo`` is a run of NUL-terminated ``key=value`` strings
    (``MODULE_INFO`` in include/linux/moduleparam.h).
    """
    if elf[:4] != b"\x7fELF" or elf[4:6] != b"\x02\x01":
        raise PermtraceError(f"{where}: not an ELF64 little-endian kernel module")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        # Elf64_Shdr: sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    try:
        _, stroff, _ = section(shstrndx)
        for i in range(shnum):
            name, off, size = section(i)
            if elf[stroff + name:elf.index(b"\0", stroff + name)] == b".modinfo":
                entries = (e.decode("utf-8", "replace").partition("=") for e in elf[off:off + size].split(b"\0"))
                return [(key, value) for key, sep, value in entries if sep]
    except (struct.error, ValueError):
        raise PermtraceError(f"{where}: truncated ELF file (fix: delete the package's directory in the "
                             f"cache so that it is unpacked again)") from None
    return []


def softdeps(value: str) -> tuple[list[str], list[str]]:
    """``'pre: a b post: c'`` -> (['a', 'b'], ['c']) (the modprobe.d softdep syntax)."""
    pre: list[str] = []
    post: list[str] = []
    into = None
    for word in value.split():
        if word in ("pre:", "post:"):
            into = pre if word == "pre:" else post
        elif into is not None:
            into.append(word)
    return pre, post


@dataclass
class ModuleTree:
    """The modules of one kernel: ``moddir`` is ``lib/modules/<release>``."""

    moddir: Path
    paths: dict[str, Path] = field(default_factory=dict)   # name -> file
    builtin: set[str] = field(default_factory=set)
    builtin_aliases: set[str] = field(default_factory=set)

    @classmethod
    def scan(cls, moddir: Path) -> "ModuleTree":
        tree = cls(moddir)
        for root, _dirs, files in os.walk(moddir / "kernel"):
            for f in files:
                if f.endswith(SUFFIXES):
                    tree.paths[module_name(f)] = Path(root) / f
        builtin = moddir / "modules.builtin"
        if builtin.is_file():
            tree.builtin = {module_name(line.strip()) for line in builtin.read_text().splitlines() if line.strip()}
        # "<module>.<key>=<value>" records, NUL-separated, of built-in modules
        builtin_info = moddir / "modules.builtin.modinfo"
        if builtin_info.is_file():
            for entry in builtin_info.read_bytes().split(b"\0"):
                key, sep, value = entry.decode("utf-8", "replace").partition("=")
                if sep and key.endswith(".alias"):
                    tree.builtin_aliases.add(value.replace("-", "_"))
        return tree

    def info(self, name: str) -> list[tuple[str, str]]:
        return modinfo(read_ko(self.paths[name]), where=str(self.paths[name]))

    def aliases(self, cache: Path | None = None) -> dict[str, list[str]]:
        """alias -> module names providing it (read from every module once; cached as JSON)."""
        if cache is not None and cache.is_file():
            return json.loads(cache.read_text())
        table: dict[str, list[str]] = {}
        for name in sorted(self.paths):
            for key, value in self.info(name):
                if key == "alias":
                    table.setdefault(value.replace("-", "_"), []).append(name)
        if cache is not None:
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, sort_keys=True))
            os.replace(tmp, cache)
        return table

    def load_order(self, wanted: list[str], alias_cache: Path | None = None) -> tuple[list[str], list[str]]:
        """Paths (relative to ``moddir``) of ``wanted`` and their dependencies, in load order,
        and the requested names that are built into the kernel (nothing to load).

        Depth-first like modprobe: softdep ``pre:`` modules, then ``depends=``,
        then the module, then softdep ``post:``.  A dependency that is built
        into the kernel is skipped; a requested module that is neither a
        module nor built in is an error.  A softdep names a module or an
        alias (``crc32c``).  Simplification: modprobe loads every module
        providing an alias; here an alias that a built-in module provides
        needs nothing, and otherwise only one provider is loaded, the
        portable ``*_generic`` one if there is one (it works on any CPU QEMU
        emulates), else the first by name.
        """
        order: list[str] = []
        builtin: list[str] = []
        seen: set[str] = set()
        aliases: dict[str, list[str]] | None = None

        def softdep_target(soft: str) -> str | None:
            nonlocal aliases
            if module_name(soft) in self.paths:
                return module_name(soft)
            alias = soft.replace("-", "_")
            if alias in self.builtin_aliases:
                return None
            if aliases is None:
                aliases = self.aliases(alias_cache)
            providers = sorted(aliases.get(alias, []))
            generic = [p for p in providers if p.endswith("_generic")]
            return (generic or providers or [None])[0]

        def visit(name: str, requested: bool) -> None:
            if name in seen:
                return
            seen.add(name)
            if name not in self.paths:
                if requested and name not in self.builtin:
                    close = get_close_matches(name, list(self.paths), n=3)
                    raise PermtraceError(
                        f"module {name!r} is neither a module nor built into the kernel in {self.moddir}"
                        + (f" (fix: did you mean {', '.join(close)}?)" if close else ""))
                if requested:
                    builtin.append(name)
                return   # a dependency built into the kernel: nothing to load
            info = self.info(name)
            pre = [t for k, v in info if k == "softdep" for t in softdeps(v)[0]]
            post = [t for k, v in info if k == "softdep" for t in softdeps(v)[1]]
            depends = [d for k, v in info if k == "depends" for d in v.split(",") if d]
            for target in [*map(softdep_target, pre), *map(module_name, depends)]:
                if target:
                    visit(target, False)
            order.append(str(self.paths[name].relative_to(self.moddir)))
            for target in map(softdep_target, post):
                if target:
                    visit(target, False)

        for name in wanted:
            visit(module_name(name), True)
        return order, builtin
