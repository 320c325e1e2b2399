"""What `ftx run` shows while a worker trains, driven by its progress events.

On a terminal: a live bar (step/total, loss, tokens/s, ETA). With ``-q`` or when
stderr is not a terminal (logs, CI): one plain line per logged step. Other
worker output goes to the launch log; only ``[ftx]`` lines and errors are shown.
"""

from __future__ import annotations

import time

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ftx.core.console import console, is_quiet
from ftx.core.contract import ProgressEvent


class RunDisplay:
    """Turns worker output lines into a progress bar or plain progress lines."""

    def __init__(self, backend: str):
        self.backend = backend
        self.live = console.is_terminal and not is_quiet()
        self.progress: Progress | None = None
        self.task = None
        self.started = time.time()
        self.first_step: int | None = None

    def __enter__(self) -> RunDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def line(self, text: str) -> None:
        """One line of worker output."""
        event = ProgressEvent.parse(text)
        if event is not None:
            self.event(event)
        elif not is_quiet() and _worth_showing(text):
            console.print(escape(text.rstrip("\n")))

    def event(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self.started, self.first_step = time.time(), event.step
            if self.live:
                self._open_bar(event)
            return
        if self.progress is not None and self.task is not None:
            fields = {}
            if event.loss is not None:
                fields["loss"] = f"{event.loss:.4f}"
            if event.tokens_per_s is not None:
                fields["speed"] = f"{event.tokens_per_s:,.0f}"
            self.progress.update(self.task, completed=event.step, total=event.total, **fields)
            if event.kind == "done":
                self.progress.stop()
                self.progress = None
        elif event.kind == "step" and event.logged and not is_quiet():
            console.print(self._plain(event))

    def _open_bar(self, event: ProgressEvent) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{self.backend}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=event.total, completed=event.step, loss="-", speed="-"
        )
        self.progress.start()

    def _plain(self, event: ProgressEvent) -> str:
        done = event.step - (self.first_step or 0)
        elapsed = time.time() - self.started
        left = elapsed / done * (event.total - event.step) if done > 0 else 0.0
        parts = [f"step {event.step}/{event.total}"]
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.tokens_per_s is not None:
            parts.append(f"{event.tokens_per_s:,.0f} tok/s")
        parts.append(f"ETA {_clock(left)}")
        return "  ".join(parts)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _worth_showing(line: str) -> bool:
    """Worker messages and errors; framework chatter stays in the log file."""
    text = line.strip()
    return text.startswith("[ftx]") or "Error" in text or "Traceback" in text
