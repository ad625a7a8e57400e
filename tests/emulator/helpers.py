"""Test helpers for the emulator tests."""

from __future__ import annotations


class NaiveRange:
    """Lowest-address first fit over a sorted list of free ``[start, end)`` blocks."""

    def __init__(self, start: int, end: int) -> None:
        self.free = [(start, end)]

    def alloc(self, n: int, align: int = 1) -> int | None:
        for i, (s0, e) in enumerate(self.free):
            s = (s0 + align - 1) // align * align
            if e - s >= n:
                self.free[i:i + 1] = [b for b in ((s0, s), (s + n, e)) if b[1] > b[0]]
                return s
        return None

    def release(self, blocks: list[tuple[int, int]]) -> None:
        merged: list[tuple[int, int]] = []
        for s, e in sorted(self.free + blocks):
            if merged and merged[-1][1] == s:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self.free = merged
