"""Real BPF programs on the running kernel, through ``bpf(2)`` via ctypes.

Used by ``permtrace groundtruth bpf`` (load/free programs while recording)
and ``permtrace record`` (enumerate what others load).  x86-64 only: the
syscall number and ``union bpf_attr`` / ``struct bpf_prog_info`` offsets are
those of include/uapi/linux/bpf.h on x86-64.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
from dataclasses import dataclass

from traces.errors import PermtraceError

NR_BPF = 321                 # arch/x86/entry/syscalls/syscall_64.tbl
BPF_PROG_LOAD = 5
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TYPE_SOCKET_FILTER = 1
SO_ATTACH_FILTER = 26
INFO_LEN = 256               # >= sizeof(struct bpf_prog_info); the tail must be zero

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    r = _libc.syscall(NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def ebpf_insns(k: int, imm: int = -2) -> bytes:
    """``k - 1`` x ``mov64 r0, imm`` then ``exit``: k instructions.

    With imm = -2 each mov JITs to 7 bytes on x86-64 (measured: k = 4096 ->
    28683 bytes of JIT image).
    """
    mov = struct.pack("<BBhi", 0xB7, 0, 0, imm)          # BPF_ALU64 | BPF_MOV | BPF_K
    return mov * (k - 1) + struct.pack("<BBhi", 0x95, 0, 0, 0)   # BPF_JMP | BPF_EXIT


def load_ebpf(k: int, imm: int = -2, name: bytes = b"permtrace") -> int:
    """Load a SOCKET_FILTER program of ``k`` instructions; returns its fd."""
    code = ebpf_insns(k, imm)
    ibuf = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(144)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_SOCKET_FILTER, k,
                     ctypes.addressof(ibuf), ctypes.addressof(lic))
    attr[48:48 + len(name[:15])] = name[:15]                       # prog_name[BPF_OBJ_NAME_LEN]
    return _bpf(BPF_PROG_LOAD, attr)


@dataclass(frozen=True)
class ProgInfo:
    """From ``struct bpf_prog_info``: ``load_time`` is ns since boot (CLOCK_BOOTTIME)."""

    id: int
    jited_prog_len: int
    load_time: int
    name: str
    jited_ksym: int = 0          # address of the JIT image (first function)


def prog_info(fd: int) -> ProgInfo:
    """``BPF_OBJ_GET_INFO_BY_FD`` on a program fd."""
    info = ctypes.create_string_buffer(INFO_LEN)
    ksym = (ctypes.c_uint64 * 1)()
    # nr_jited_ksyms = 1, nr_jited_func_lens = 0, jited_ksyms = &ksym (struct bpf_prog_info)
    struct.pack_into("<IIQ", info, 104, 1, 0, ctypes.addressof(ksym))
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIQ", attr, 0, fd, INFO_LEN, ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    prog_id, = struct.unpack_from("<I", info, 4)
    jited, = struct.unpack_from("<I", info, 16)
    load_time, = struct.unpack_from("<Q", info, 40)
    name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(prog_id, jited, load_time, name, ksym[0])


def prog_ids() -> list[int]:
    """IDs of every loaded program (``BPF_PROG_GET_NEXT_ID``; needs CAP_SYS_ADMIN)."""
    ids, start = [], 0
    attr = ctypes.create_string_buffer(12)
    while True:
        struct.pack_into("<III", attr, 0, start, 0, 0)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, attr)
        except OSError as e:
            if e.errno == 2:          # ENOENT: no more
                return ids
            raise
        start, = struct.unpack_from("<I", attr, 4)
        ids.append(start)


def info_by_id(prog_id: int) -> ProgInfo | None:
    """Info of program ``prog_id``, or None if it is gone already."""
    attr = ctypes.create_string_buffer(12)
    struct.pack_into("<III", attr, 0, prog_id, 0, 0)
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except OSError:
        return None
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


class ClassicFilter:
    """A classic BPF program attached to a UDP socket (``SO_ATTACH_FILTER``).

    ``k - 1`` x ``ld #imm`` then ``ret #0xffff``; the kernel migrates it to
    eBPF and JITs it (net/core/filter.c bpf_prepare_filter).  Classic
    programs have no ID, so their JIT size cannot be read back: see
    :func:`classic_jit_estimate`.
    """

    def __init__(self, k: int, imm: int = -2) -> None:
        ins = struct.pack("<HBBI", 0x00, 0, 0, imm & 0xFFFFFFFF) * (k - 1) \
            + struct.pack("<HBBI", 0x06, 0, 0, 0xFFFF)
        self._buf = ctypes.create_string_buffer(ins, len(ins))
        fprog = struct.pack("<HxxxxxxQ", k, ctypes.addressof(self._buf))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()


def classic_jit_estimate(k: int) -> int:
    """Estimated JIT bytes of :class:`ClassicFilter` (k instructions).

    An estimate, not a measurement: each migrated ``ld #imm`` becomes a
    32-bit ``mov`` (5 bytes of x86), plus ~64 bytes of prologue/epilogue;
    consistent with the ~20 KB per 4096-insn program gt_bpf.py inferred from
    pack counts (groundtruth REPORT.md).
    """
    return 5 * (k - 1) + 64


def probe_pack_used() -> int:
    """Bytes in use in the ``bpf_prog_pack`` a new small program lands in (an estimate).

    Loads a 2-instruction program, reads where its image landed and frees
    it; see :func:`traces.importers.bpftool.pack_used_estimate`.
    """
    from traces.importers.bpftool import pack_used_estimate

    fd = load_ebpf(2, name=b"permtrace_probe")
    try:
        info = prog_info(fd)
    finally:
        os.close(fd)
    return pack_used_estimate(info.jited_ksym, info.jited_prog_len)


def check_bpf_available() -> None:
    """Raise PermtraceError with the fix when bpf(2) program enumeration is unavailable."""
    try:
        prog_ids()
    except OSError as e:
        raise PermtraceError(f"bpf(2) is not usable here ({e.strerror}); run as root on a kernel "
                             "with CONFIG_BPF_SYSCALL") from None
