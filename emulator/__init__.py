"""The emulated x86-64 kernel memory model and the allocation policies.

Sees numpy columns and Python ints, never Polars; returns
:class:`emulator.result.ReplayResult`.

Public API: :class:`Machine`, :func:`replay`, :class:`ReplayError`,
``emulator.policies.available()`` / ``make()``.
"""

from emulator import policies
from emulator.errors import ReplayError
from emulator.machine import Machine
from emulator.replay import replay
from emulator.result import ReplayResult

__all__ = ["Machine", "ReplayError", "ReplayResult", "policies", "replay"]
