"""User-facing errors.

An :class:`FtxError` is a mistake the user can fix (a typo in a recipe, a
missing file, a framework that is not installed). The CLI prints its message
as one paragraph and exits with code 2; it never shows a traceback for it.
"""

from __future__ import annotations


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
        return text
