"""Errors of the emulator.

Hooks and primitives raise :class:`KernelFault` (the emulated kernel could
not do what the trace asked: unknown id, out of address space or memory);
:func:`emulator.replay` turns it into a :class:`ReplayError` naming the
event's row, time, op and id.
"""

from __future__ import annotations

from traces.errors import PermtraceError


class KernelFault(Exception):
    """The emulated kernel cannot serve an event; the message says why."""


class ReplayError(PermtraceError):
    """A trace event the emulator cannot replay: names row, ts_ns, op and id."""

    def __init__(self, what: str, *, row: int, ts_ns: int, op: str, id: int, file: str | None = None) -> None:
        self.what, self.row, self.ts_ns, self.op, self.id, self.file = what, row, ts_ns, op, id, file
        where = f"file {file}, " if file else ""
        super().__init__(f"{where}row {row} (ts_ns={ts_ns}, op={op}, id={id}): {what}")
