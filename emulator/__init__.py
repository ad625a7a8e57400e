"""The emulated x86-64 kernel memory model and the allocation policies.

Sees numpy columns and Python ints, never Polars; returns
:class:`emulator.result.ReplayResult`.
"""
