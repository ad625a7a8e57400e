"""Debian packages for the guest: pick, download and unpack, with a cache.

Only the ordinary apt clients are used (``apt-cache``, ``apt-get download``,
``dpkg-deb -x``): nothing is installed on the host, and a package already
in the cache is never fetched again (a warm cache works offline).

Cache layout (default ``~/.cache/permtrace/qemu``)::

    debs/<package>_<version>_<arch>.deb      as apt-get download names them
    trees/<package>_<version>_<arch>/        dpkg-deb -x of that .deb
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from traces.errors import PermtraceError

DEFAULT_CACHE = Path.home() / ".cache" / "permtrace" / "qemu"

#: host tool -> the Debian package that provides it
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
}


def require_tools(*names: str) -> None:
    """Raise PermtraceError naming every missing host tool and how to install it."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pkgs = " ".join(sorted({TOOLS.get(n, n) for n in missing}))
        raise PermtraceError(
            f"missing host tool(s): {', '.join(missing)} "
            f"(fix: apt-get install -y --no-install-recommends {pkgs})")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise PermtraceError(f"{what}: cannot run {cmd[0]} ({e})") from None
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip().splitlines()
        raise PermtraceError(f"{what}: {' '.join(cmd)} failed with exit {done.returncode}: "
                             f"{msg[-1] if msg else 'no output'}")
    return done.stdout


def _natural_key(name: str) -> list:
    """'6.1.0-56' > '6.1.0-9': compare digit runs as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", name)]


def newest_kernel_package(release: str, names: list[str]) -> str | None:
    """The newest ``linux-image-<release>.*-amd64`` in ``names`` (the generic flavour).

    ``release`` is ``major.minor`` (``6.1``, ``6.12``); cloud and rt flavours,
    ``-unsigned`` and meta-packages (``linux-image-6.12-amd64``) never match.
    ABIs compare numerically, so ``6.1.0-56`` beats ``6.1.0-9``.
    """
    pat = re.compile(rf"^linux-image-{re.escape(release)}\.\d[^\s]*-amd64$")
    hits = [n for n in names if pat.match(n) and not re.search(r"-(cloud|rt)-amd64$", n)]
    return max(hits, key=_natural_key) if hits else None


def resolve_kernel_package(spec: str) -> str:
    """``linux-image-…`` is taken as is; ``X.Y`` becomes the newest such package apt knows."""
    if spec.startswith("linux-image-"):
        return spec
    if re.fullmatch(r"\d+\.\d+", spec):
        require_tools("apt-cache")
        names = _run(["apt-cache", "pkgnames", "linux-image-"], "listing kernel packages").split()
        pkg = newest_kernel_package(spec, names)
        if pkg is None:
            raise PermtraceError(
                f"apt knows no linux-image-{spec}.*-amd64 package "
                f"(fix: run apt-get update, add the Debian suite that ships {spec}, "
                f"or pass a package name such as linux-image-6.1.0-56-amd64)")
        return pkg
    raise PermtraceError(
        f"--kernel-deb {spec!r} is neither a package name nor a release "
        f"(fix: pass e.g. linux-image-6.1.0-56-amd64, or 6.1 for the newest 6.1 apt knows)")


def download(package: str, cache: Path) -> Path:
    """The cached ``.deb`` of ``package``, fetched with ``apt-get download`` if absent."""
    debs = cache / "debs"
    cached = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: _natural_key(p.name))
    if cached:
        return cached[-1]
    require_tools("apt-get")
    debs.mkdir(parents=True, exist_ok=True)
    # download into a private directory, then rename: a killed download
    # never leaves a truncated .deb that a later run would trust
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download.") as tmp:
        _run(["apt-get", "download", "-q", package], f"downloading {package}", cwd=Path(tmp))
        got = list(Path(tmp).glob(f"{package}_*.deb"))
        if len(got) != 1:
            raise PermtraceError(f"downloading {package}: apt-get download left {got!r}")
        os.replace(got[0], debs / got[0].name)
        return debs / got[0].name


def extract(deb: Path, cache: Path) -> Path:
    """``dpkg-deb -x`` of ``deb`` into ``cache/trees/<deb stem>`` (once)."""
    tree = cache / "trees" / deb.stem
    if tree.is_dir():
        return tree
    require_tools("dpkg-deb")
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=tree.parent, prefix=f".{deb.stem}."))
    try:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
        try:
            os.replace(tmp, tree)
        except OSError:
            if not tree.is_dir():   # else another run unpacked it first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


def split_parts(deb: Path, package: str) -> list[str]:
    """The ``linux-binary-*`` and ``linux-modules-*`` packages a split ``linux-image-*`` depends on.

    From Debian 14 (forky) on, ``linux-image-<abi>`` holds neither the kernel
    nor its modules: they come in ``linux-binary-<abi>`` and
    ``linux-modules-<abi>``.  Empty for an older, whole package.
    """
    abi = package.removeprefix("linux-image-")
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"], f"reading {deb.name}")
    names = {d.strip().split(" ")[0] for d in re.split(r"[,|]", depends)}
    return [part for part in (f"linux-binary-{abi}", f"linux-modules-{abi}") if part in names]


def kernel_trees(package: str, deb: Path, tree: Path, cache: Path) -> list[Path]:
    """The unpacked trees of ``package`` (its ``deb``, unpacked in ``tree``): that tree, and
    for a split package (no ``boot/vmlinuz-*`` of its own) its parts', fetched like it."""
    if _vmlinuz(tree):
        return [tree]
    return [tree] + [extract(download(part, cache), cache) for part in split_parts(deb, package)]


def _vmlinuz(tree: Path) -> list[Path]:
    """The kernel images in ``tree``: ``boot/vmlinuz-<release>``, or (Debian 14's
    linux-binary-*) ``usr/lib/modules/<release>/vmlinuz``."""
    return sorted(tree.glob("boot/vmlinuz-*")) + sorted(tree.glob("usr/lib/modules/*/vmlinuz"))


def kernel_files(trees: list[Path], package: str) -> tuple[Path, Path]:
    """(vmlinuz, module directory ``lib/modules/<release>``) of an unpacked kernel: the
    linux-image deb's tree and, for a split package, its parts' (:func:`split_parts`).

    Bookworm ships ``/lib/modules``; trixie and later ship ``/usr/lib/modules``
    (where Debian 14's kernel image also lies, in a directory of its own).
    """
    vmlinuz = [v for tree in trees for v in _vmlinuz(tree)]
    moddirs = [m for tree in trees for pattern in ("lib/modules/*", "usr/lib/modules/*")
               for m in sorted(tree.glob(pattern)) if (m / "kernel").is_dir()]
    if not vmlinuz or not moddirs:
        raise PermtraceError(
            f"{package} holds no boot/vmlinuz-* and lib/modules/*/kernel: is it a meta-package? "
            f"(fix: pass the versioned package, e.g. linux-image-6.1.0-56-amd64; "
            f"'apt-cache depends {package}' shows which one it points to)")
    return vmlinuz[0], moddirs[0]
