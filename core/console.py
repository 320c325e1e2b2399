"""One rich console for the CLI (stderr), with a quiet switch for scripts."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

# Text is printed as it is: no markup, no :emoji: codes (a path or key a user typed is
# shown literally); styling comes in as rich Text (see :func:`lead`).
console = Console(stderr=True, highlight=False, markup=False, emoji=False)  # progress, errors
results = Console(highlight=False, markup=False, emoji=False)  # what a command produces
_quiet = False


def set_quiet(value: bool) -> None:
    """Silence progress and chatter (results and errors still print)."""
    global _quiet
    _quiet = value


def is_quiet() -> bool:
    return _quiet


def lead(label: str, rest: str = "", style: str = "bold") -> Text:
    """A line whose first words are styled and whose rest is literal text."""
    return Text.assemble((label, style), rest)


def info(message: str | Text) -> None:
    """A progress line, hidden by --quiet."""
    if not _quiet:
        console.print(message)


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """A warning about a legal but surprising value, printed once per command (even
    with --quiet: it is about the result)."""
    if message not in _WARNED:
        _WARNED.add(message)
        console.print(lead("warning:", f" {message}", "yellow"), soft_wrap=True)
