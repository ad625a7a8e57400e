"""The one error hierarchy of permtrace.

Library code raises these; only the CLI (``pipeline.cli``) turns them into
messages and exit codes (architecture.md section 5):

====  =====================================================
exit  meaning
====  =====================================================
0     ok
1     a ``permtrace compare`` threshold was crossed
2     bad usage or bad input (any :class:`PermtraceError`)
3     internal error (anything else: a bug, please report)
====  =====================================================
"""

from __future__ import annotations


class PermtraceError(Exception):
    """Bad input or bad usage: the user can fix it.  Exit code 2."""

    exit_code = 2


class TraceError(PermtraceError):
    """A problem with a trace file, located as precisely as known.

    ``file``, ``row`` (0-based event row), ``column`` and ``hint`` (how to
    fix it) are optional; ``str()`` joins whatever is known.
    """

    def __init__(self, what: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None, hint: str | None = None) -> None:
        self.what, self.file, self.row, self.column, self.hint = what, file, row, column, hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ", ".join(
            part for part in (
                self.file and f"file {self.file}",
                self.row is not None and f"row {self.row}",
                self.column and f"column {self.column!r}",
            ) if part
        )
        text = f"{where}: {self.what}" if where else self.what
        return f"{text} (fix: {self.hint})" if self.hint else text
