"""User-facing errors.

An :class:`FtxError` is a mistake the user can fix (a typo in a recipe, a
missing file, a framework that is not installed). The CLI prints its message
as one paragraph and exits with code 2; it never shows a traceback for it.
"""

from __future__ import annotations

# Control characters in a message (a tab or newline in a path a user typed, an escape
# sequence in a file name) are shown as escapes: printed raw, a terminal would expand,
# break or interpret them, and the message would no longer show the name as it is.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127, *range(0x80, 0xA0))}
_ESCAPES.update({9: "\\t", 10: "\\n", 13: "\\r"})


def printable(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\t``, ``\\x1b``)."""
    return text.translate(_ESCAPES)


class FtxError(Exception):
    """A user error: names the file and key (or line), what is wrong, and the fix."""

    def __init__(
        self, message: str, *, where: str | None = None, fix: str | None = None, exit_code: int = 2
    ):
        self.exit_code = exit_code
        self.where = where
        self.fix = fix
        self.detail = message
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.detail}" if self.where else self.detail
        if self.fix:
            text = f"{text.rstrip('.')}. Fix: {self.fix}"
        return printable(text)
