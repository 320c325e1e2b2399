"""The one way every bench/ script measures, so a figure in the README can be re-run.

- Each run is a fresh child process (nothing warm is shared), timed from outside.
- Runs are interleaved, A B C A B C ..., at least 3 rounds, so a change in the machine's
  load or its caches lands on every side alike; the table shows the median and the
  min-max of each, and ratios are taken between medians.
- Peak memory is the largest sum of RSS over the run's whole process tree (workers
  included), sampled every 20 ms from /proc.
- The header records the commit, the machine, and its load average before and after.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    seconds: float  # to the end, or to the first line matching the run's ``until``
    peak_rss_mb: float
    output: str = ""


@dataclass
class Run:
    """One side of a comparison: a command (or a callable returning the command), run
    ``repeats`` times interleaved with the others; ``before`` runs outside the clock."""

    label: str
    command: Sequence[str] | Callable[[], Sequence[str]]
    env: dict[str, str] | None = None
    before: Callable[[], None] | None = None
    until: str | None = None  # a regex: stop the clock (and the run) at the first such line
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak_mb(self) -> float:
        return max(s.peak_rss_mb for s in self.samples)


def _tree_rss_mb(pid: int) -> float:
    """The summed RSS of a process and all its descendants (MB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(
    command: Sequence[str], env: dict[str, str] | None = None, until: str | None = None
) -> Sample:
    """Run ``command`` to completion (or to its first output line matching ``until``, then
    stop its process tree); the wall time and the peak RSS of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if until is not None:
        pattern, lines = re.compile(until), []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if pattern.search(line):
                seconds = time.perf_counter() - started
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                sampler.join()
                return Sample(seconds, peak[0], "".join(lines))
        proc.wait()
        raise SystemExit(f"{' '.join(command)} ended before {until!r}:\n{''.join(lines)[-3000:]}")
    output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    return Sample(seconds, peak[0], output)


def interleave(runs: list[Run], repeats: int = 3) -> None:
    """Run every side ``repeats`` times, in the order A B C A B C ..."""
    for round_number in range(repeats):
        for run in runs:
            if run.before is not None:
                run.before()
            command = run.command() if callable(run.command) else run.command
            sample = measure(command, run.env, run.until)
            run.samples.append(sample)
            print(
                f"  round {round_number + 1}: {run.label}: {sample.seconds:.2f} s,"
                f" peak {sample.peak_rss_mb:.0f} MB",
                flush=True,
            )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, str]:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "load": _load(),
    }


def header(title: str, before: dict[str, str]) -> str:
    after = _load()
    return (
        f"{title}\n\ncommit {before['commit']}, {before['cpus']} CPUs, Python"
        f" {before['python']}; load average before {before['load']}, after {after}\n"
    )


def spread(run: Run) -> str:
    times = [s.seconds for s in run.samples]
    return f"{run.median:.2f} ({min(times):.2f}-{max(times):.2f})"


# A `ftx run` as one timed child process: runs it, then prints its run.json's training
# timing (train_timing.json's numbers) and final loss as one JSON line. Arguments: the
# `ftx run` command, then the run.json path.
FTX_RUN = """
import json, subprocess, sys
subprocess.run(sys.argv[1:-1], check=True, capture_output=True)
run = json.load(open(sys.argv[-1]))
print(json.dumps({**run["training"], "final_loss": run["final_loss"]}))
"""


def sh(*command: str) -> str:
    """Run a set-up command (outside any clock); its stdout, or exit with its stderr."""
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def training_bench(
    description: str, rows: int, workdir: str, batch: int = 8
) -> tuple[Any, Path, Path]:
    """The training benchmarks' shared set-up: the command line (--rows, --batch,
    --repeats, --workdir), a random llama 'small' and an alpaca-like dataset of --rows rows
    in the work folder. Returns (args, model folder, dataset file)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=rows)  # alpaca-like rows
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "model"
    if not (model / "config.json").exists():
        ftx = str(Path(sys.executable).with_name("ftx"))
        sh(ftx, "init-model", "--arch", "llama", "--size", "small", "--out", str(model))
    data = args.workdir / "alpaca_like.jsonl"
    sh(sys.executable, str(ROOT / "bench/make_alpaca_like.py"), str(data), "--rows", str(args.rows))
    return args, model, data
