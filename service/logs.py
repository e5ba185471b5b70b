"""Log lines a client cannot forge: one line per record, whatever the values in it.

A value a client controls (a path, a header, a file name, a form field, an
exception's message about them) may hold a newline, a carriage return or a
Unicode line separator; written as is, it would start a line that reads as
a record of its own (``ERROR app [id]: ...``). Rather than escaping at every
call site of every library (ours, uvicorn's, Gradio's), the handler's
formatter escapes each record as it is written: the message on one line,
with control characters as ``\\n``, ``\\x1b``, ``\\u2028``; a traceback keeps
its lines, each indented, so that a line that starts at the left margin is
always a record's first. What Gradio prints (``print``,
``traceback.print_exc``) instead of logging goes through logging too while
the server runs (``printed_lines_logged``), a record per line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
from collections.abc import Iterator

_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: every
character ``str.splitlines`` or a terminal takes for a line break or a command."""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
CONTINUATION = "  "
"""Before each line of a record after its first (a traceback's)."""


def escape(text: str) -> str:
    """``text`` on one line: each control character or line separator as an escape."""
    return _BREAKING.sub(lambda found: _escaped(found.group()), text)


def _escaped(character: str) -> str:
    code = ord(character)
    return _NAMED.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def indented(text: str) -> str:
    """A multi-line text (a traceback) as continuation lines: each line escaped, indented."""
    return "\n".join(CONTINUATION + escape(line) for line in text.split("\n"))


class EscapingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose records each start one line and hold no forged one."""

    def format(self, record: logging.LogRecord) -> str:
        """The message on one line; the traceback and stack, if any, indented below it.

        The traceback is formatted here, not taken from ``record.exc_text``: another
        handler may have cached its own, unindented, there.
        """
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        below = []
        if record.exc_info:
            below.append(self.formatException(record.exc_info))
        elif record.exc_text:
            below.append(record.exc_text)
        if record.stack_info:
            below.append(self.formatStack(record.stack_info))
        return "\n".join([escape(self.formatMessage(record)), *map(indented, below)])


class PrintedLines(io.TextIOBase):
    """A text stream that logs each line written to it as a record of ``logger``.

    Lines are gathered per thread (``print`` writes its text and its newline
    apart); a write made while this thread is already logging one (a handler
    that fails reports it to ``sys.stderr``) goes to ``fallback`` as it is.
    """

    def __init__(self, logger: logging.Logger, level: int, fallback: io.TextIOBase) -> None:
        self._logger = logger
        self._level = level
        self._fallback = fallback
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def fileno(self) -> int:
        """The stream underneath's, for what writes to a descriptor (faulthandler)."""
        return self._fallback.fileno()

    def write(self, text: str) -> int:
        local = self._local
        if getattr(local, "logging", False):
            return self._fallback.write(text)
        *complete, local.partial = (getattr(local, "partial", "") + text).split("\n")
        local.logging = True
        try:
            for line in complete:
                self._logger.log(self._level, "%s", line)
        finally:
            local.logging = False
        return len(text)

    def flush(self) -> None:
        partial = getattr(self._local, "partial", "")
        if partial:
            self._local.partial = ""
            self.write(partial + "\n")


@contextlib.contextmanager
def printed_lines_logged() -> Iterator[None]:
    """While the block runs, what is printed to stdout or stderr is logged, a line a record
    (loggers ``stdout``, INFO, and ``stderr``, WARNING), through the escaping handler."""
    stdout = PrintedLines(logging.getLogger("stdout"), logging.INFO, sys.stdout)  # type: ignore[arg-type]
    stderr = PrintedLines(logging.getLogger("stderr"), logging.WARNING, sys.stderr)  # type: ignore[arg-type]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):  # type: ignore[type-var]
        try:
            yield
        finally:
            stdout.flush()
            stderr.flush()
