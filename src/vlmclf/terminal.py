"""Text from outside (server error bodies, manifest fields, model answers, class names, file
names) made safe to print: one helper, ``terminal_safe``, used wherever a command writes such
text to a terminal, so that an escape sequence in it (clear the screen, retitle the window,
rewrite the line before, a hyperlink) is shown as text instead of being run by the terminal.

What is escaped: the C0 controls except newline and tab (ESC, BEL, backspace, carriage
return...), DEL, the C1 controls (U+0080-U+009F, CSI and OSC among them) and the Unicode
direction overrides that reorder what a line seems to say. Each becomes a visible ``\\x1b`` /
``\\u202e`` escape. ``one_line`` escapes newlines and tabs too (an ``error:`` line stays one).
"""

from __future__ import annotations

import logging
import re
import sys

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_ONE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, *, one_line: bool = False) -> str:
    """``str(text)`` with every character a terminal would act on written as an escape."""
    return (_UNSAFE_ONE_LINE if one_line else _UNSAFE).sub(_escape, str(text))


class SafeFormatter(logging.Formatter):
    """A log line whose message (and exception text) is made terminal-safe."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted (a test runner
    or a redirect may have replaced it since the handler was made)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def safe_log_output(logger_name: str = "vlmclf") -> None:
    """Warnings of vlmclf's loggers (an API item that failed with the server's own text, a
    serve log line quoting a client) on stderr through ``SafeFormatter``; once per process.
    Without it they would reach stderr raw through Python's last-resort handler."""
    logger = logging.getLogger(logger_name)
    if any(isinstance(h.formatter, SafeFormatter) for h in logger.handlers):
        return
    handler = _CurrentStderr()
    handler.setFormatter(SafeFormatter("%(message)s"))
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
