"""`ftx run` shows training progress from the worker's events: a live bar on a terminal,
plain lines in logs, nothing with -q; the raw events never reach the user."""

from __future__ import annotations

import os
import pty
import select
import subprocess
from pathlib import Path

from conftest import FTX, ROOT, run_ftx


def recipe(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"""
model: {{path: {model}}}
data: {{datasets: [{ROOT / "recipes/data/quickstart_train.jsonl"}], max_seq_len: 64,
       max_samples: 48}}
method: {{finetuning: full}}
train: {{max_steps: 6, micro_batch_size: 4, logging_steps: 2, learning_rate: 1.0e-3}}
"""
    )
    return path


def run_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run ftx with a pseudo-terminal as stdout and stderr; return (exit code, screen text)."""
    leader, follower = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="140")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([str(FTX), *args], stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_live_bar(tmp_path: Path, tiny_llama: Path) -> None:
    code, screen = run_on_a_terminal(
        "run", str(recipe(tmp_path, tiny_llama)), "--out", str(tmp_path / "out")
    )
    assert code == 0, screen[-3000:]
    assert "━" in screen and "6/6" in screen and "tok/s" in screen and "ETA" in screen
    assert "FTX_EVENT" not in screen and "step 2/6" not in screen


def test_logs_get_plain_lines_and_quiet_gets_none(tmp_path: Path, tiny_llama: Path) -> None:
    path = recipe(tmp_path, tiny_llama)
    result = run_ftx("run", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/6", "4/6", "6/6"]  # the logged steps
    assert all("loss" in ln and "tok/s" in ln and "ETA" in ln for ln in lines)
    assert "FTX_EVENT" not in result.stderr + result.stdout and "━" not in result.stderr
    # The launch log keeps everything, the events included.
    assert "FTX_EVENT" in (tmp_path / "out/logs/launch.log").read_text()
    quiet = run_ftx("-q", "run", str(path), "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "step " not in quiet.stderr and "ftx run summary" in quiet.stdout
