"""What `ftx run` shows while a worker trains, driven by its progress events.

On a terminal: a live bar (step/total, loss, the preference stages' reward margin and
accuracy, tokens/s, ETA). With ``-q`` or when
stderr is not a terminal (logs, CI): one plain line per logged step. Other
worker output goes to the launch log; only ``[ftx]`` lines and errors are shown.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
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
            console.print(text.rstrip("\n"))

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
            if event.margin is not None:
                fields["rewards"] = _rewards(event)
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
            TextColumn("{task.fields[rewards]}{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(
            "train", total=event.total, completed=event.step, loss="-", speed="-", rewards=""
        )
        self.progress.start()

    def _plain(self, event: ProgressEvent) -> str:
        done = event.step - (self.first_step or 0)
        elapsed = time.time() - self.started
        left = elapsed / done * (event.total - event.step) if done > 0 else 0.0
        parts = [f"step {event.step}/{event.total}"]
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.margin is not None:
            parts.append(_rewards(event).strip())
        if event.tokens_per_s is not None:
            parts.append(f"{event.tokens_per_s:,.0f} tok/s")
        parts.append(f"ETA {_clock(left)}")
        return "  ".join(parts)


def _rewards(event: ProgressEvent) -> str:
    """A preference step's reward margin (and accuracy), followed by a separator."""
    text = f"margin {event.margin:.4f}"
    if event.accuracy is not None:
        text += f"  acc {event.accuracy:.2f}"
    return text + "  "


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _worth_showing(line: str) -> bool:
    """Worker messages and errors; framework chatter stays in the log file."""
    text = line.strip()
    return text.startswith("[ftx]") or "Error" in text or "Traceback" in text


@contextlib.contextmanager
def activity(label: str) -> Iterator[Callable[[str], None]]:
    """A spinner whose text the caller updates (an image build's current step); plain
    lines when not on a terminal."""
    if is_quiet():
        yield lambda _text: None
        return
    if not console.is_terminal:
        yield lambda text: console.print(f"  {text}")
        return
    with console.status(label) as status:
        yield lambda text: status.update(f"{label}: {text}")


@contextlib.contextmanager
def transfer(label: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A byte bar for a pull or push, fed the engine's JSON events (per-layer
    progressDetail); a one-line summary when not on a terminal."""
    layers: dict[str, tuple[int, int]] = {}
    live = console.is_terminal and not is_quiet()
    bar = Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(event: dict[str, Any]) -> None:
        detail = event.get("progressDetail") or {}
        if event.get("id") and detail.get("total"):
            layers[event["id"]] = (int(detail.get("current", 0)), int(detail["total"]))
            done = sum(c for c, _ in layers.values())
            bar.update(task, completed=done, total=sum(t for _, t in layers.values()))

    if live:
        bar.start()
    try:
        yield update
    finally:
        if live:
            bar.stop()
        if layers and not is_quiet():
            total = sum(t for _, t in layers.values())
            console.print(f"  {label}: {len(layers)} layers, {total / 1e6:,.1f} MB")
