"""Helpers the backend training tests share: a small SFT recipe on a tiny model, its
metrics, `ftx run` that must succeed, runs shared by the backend suite and the
backend-specific tests, and a free port for launchers."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import FTX, ROOT, run_ftx, run_nodes
from ftx.core.backend import Capabilities
from ftx.core.registry import get_spec

DATA = ROOT / "recipes" / "data"


def recipe(tmp_path: Path, model: Path, extra: str = "", steps: int = 4) -> Path:
    """A full fine-tune of ``model`` for ``steps`` steps on 96 quickstart examples, 8 held
    out, logging every step and evaluating every other (``extra``: more YAML lines)."""
    path = tmp_path / "r.yaml"
    path.write_text(
        f"""
model: {{path: {model}}}
data:
  datasets: [{{path: {DATA / "quickstart_train.jsonl"}, format: alpaca}}]
  max_seq_len: 64
  max_samples: 96
  val_size: 8
method: {{finetuning: full}}
train:
  max_steps: {steps}
  learning_rate: 1.0e-3
  micro_batch_size: 4
  grad_accum: 2
  logging_steps: 1
  eval_steps: 2
{extra}
"""
    )
    return path


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in rows(out) if "loss" in r]


def ftx_ok(*args: str) -> str:
    """Run an ftx command that must succeed; its stdout and stderr."""
    result = run_ftx(*args, timeout=1800)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout + result.stderr


def train(path: Path, out: Path, backend: str, *overrides: str) -> Path:
    result = run_ftx("run", str(path), "--backend", backend, "--out", str(out), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupted_run(
    path: Path, out: Path, backend: str, after: int = 3, extra: tuple[str, ...] = ()
) -> str:
    """Start `ftx run` (``extra``: more arguments), send it SIGTERM once ``after`` losses
    are logged, and return its stderr once it has exited with 143 (stopped by SIGTERM,
    checkpoint saved)."""
    proc = subprocess.Popen(
        [str(FTX), "run", str(path), "--backend", backend, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and len(losses(out)) >= after
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    return stderr


def assert_one_plan_for_both_nodes(folder: Path, port: int) -> str:
    """The two nodes' plans are the same file: the rank comes from the node contract's
    variables (ftx run sets FTX_NODE_RANK), the master from the recipe's defaults."""
    launch = (folder / "n1/plan/launch.sh").read_text()
    assert launch == (folder / "n0/plan/launch.sh").read_text()
    assert "${FTX_NODE_RANK}" in launch
    assert 'export FTX_MASTER_ADDR="${FTX_MASTER_ADDR:-127.0.0.1}"' in launch
    assert f'export FTX_MASTER_PORT="${{FTX_MASTER_PORT:-{port}}}"' in launch
    return launch


def two_local_nodes(
    tmp_path: Path, model: Path, backend: str, path: Path | None = None
) -> tuple[Path, int]:
    """Two "nodes" on localhost (one process each, micro batch 2: the batches of one
    process with micro batch 4), run together, of ``path`` (default: :func:`recipe`);
    returns the folder holding n0/ and n1/ and the master port."""
    port = free_port()
    nodes = (
        f"parallel: {{nnodes: 2, nproc_per_node: 1, master_addr: 127.0.0.1, master_port: {port}}}"
    )
    if path is None:
        path = recipe(tmp_path, model, nodes)
    else:
        path.write_text(path.read_text() + nodes + "\n")
    path.write_text(path.read_text().replace("micro_batch_size: 4", "micro_batch_size: 2"))
    run = [str(FTX), "run", str(path), "--backend", backend]
    run_nodes(
        [[*run, "--out", str(tmp_path / f"n{r}"), f"parallel.node_rank={r}"] for r in (0, 1)],
        tmp_path / "logs",
    )
    return tmp_path, port


def capabilities(backend: str) -> Capabilities:
    caps = get_spec(backend).capabilities
    assert caps is not None
    return caps


class Runs:
    """Runs made once per test session and shared by the backend suite and the
    backend-specific tests: ``full`` (the recipe above, keeping the framework's own files
    too), ``lora`` (rank 4 on q/v, packed where the backend packs, merged), and
    ``dpo-lora`` / ``dpo-full`` (:func:`pairs_recipe`, 6 steps), ``kto-lora`` / ``kto-full``
    (:func:`feedback_recipe`, 6 steps), ``rm-lora`` / ``rm-full`` (the pairs, 6 steps,
    checkpoints every 3, the framework's own files kept, LoRA merged)."""

    def __init__(self, folder: Path, model: Path):
        self.folder, self.model, self.made = folder, model, {}

    def get(self, backend: str, kind: str = "full") -> Path:
        key = f"{kind}-{backend}"
        if key not in self.made:
            folder = self.folder / key
            shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt that failed
            folder.mkdir()
            self.made[key] = train(self.recipe(folder, backend, kind), folder / "out", backend)
        return self.made[key]

    def recipe(self, folder: Path, backend: str, kind: str) -> Path:
        if kind.startswith(("dpo-", "kto-", "rm-")):  # dpo-lora, ..., kto-full, rm-full
            stage, finetuning = kind.split("-")
            made = feedback_recipe if stage == "kto" else pairs_recipe
            path = made(folder, self.model, steps=6)
            text = path.read_text().replace("finetuning: lora", f"finetuning: {finetuning}")
            if stage == "rm":  # checkpoints to resume from, and every export
                text = text.replace("stage: dpo", "stage: rm")
                text = text.replace("logging_steps: 1,", "logging_steps: 1, save_steps: 3,")
                merged = ", merge_lora: true" if finetuning == "lora" else ""
                if finetuning == "full":  # the SFT comparison's rate: scores are not scaled
                    text = text.replace("learning_rate: 5.0e-3", "learning_rate: 1.0e-3")
                text += f"output: {{save_format: both{merged}}}\n"
            path.write_text(text)
            return path
        if kind == "full":
            return recipe(folder, self.model, "output: {save_format: both}\n")
        path = recipe(
            folder,
            self.model,
            "  save_steps: 2\n"
            "method: {finetuning: lora, lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}}\n"
            "output: {save_format: both, merge_lora: true}\n",
        )
        text = path.read_text().replace("method: {finetuning: full}\n", "")
        if capabilities(backend).packing:
            text = text.replace("max_seq_len: 64", "max_seq_len: 64\n  packing: true")
        path.write_text(text.replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-2"))
        return path


LETTERS = "abcdefghijklmnopqrstuvwxyz"
PAIRS = 24  # 16 train pairs after 8 held out


def feedback_recipe(
    tmp_path: Path, model: Path, extra: str = "", steps: int = 4, desirable: float = 0.5
) -> Path:
    """A toy KTO set (reverse four letters): a right answer tagged desirable, an answer left
    as given tagged undesirable, a share ``desirable`` of the first, mixed at random."""
    import random

    rng = random.Random(1)
    rows_ = []
    for _ in range(PAIRS):
        word = rng.sample(LETTERS, 4)
        good = rng.random() < desirable
        answer = reversed(word) if good else word
        rows_.append({"instruction": "Reverse: " + " ".join(word),
                      "output": " ".join(answer), "label": good})  # fmt: skip
    columns = {"prompt": "instruction", "response": "output", "kto_tag": "label"}
    return _toy_recipe(tmp_path, model, "kto", rows_, {"columns": columns}, steps, extra)


def pairs_recipe(tmp_path: Path, model: Path, extra: str = "", steps: int = 4) -> Path:
    """A toy preference set (reverse four letters: chosen right, rejected as given)."""
    import random

    rng = random.Random(0)
    rows_ = []
    for _ in range(PAIRS):
        word = rng.sample(LETTERS, 4)
        rows_.append({"instruction": "Reverse: " + " ".join(word),
                      "chosen": " ".join(reversed(word)), "rejected": " ".join(word)})  # fmt: skip
    return _toy_recipe(tmp_path, model, "dpo", rows_, {"ranking": True}, steps, extra)


def _toy_recipe(
    tmp_path: Path,
    model: Path,
    stage: str,
    rows_: list[dict],
    info: dict,
    steps: int,
    extra: str,
) -> Path:
    """``rows_`` as the dataset ``toy`` (LLaMA-Factory's dataset_info entry ``info``) and a
    LoRA recipe of ``stage`` on it: 8 rows held out, 4 x 2 rows a step."""
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"toy": {"file_name": data.name, **info}})
    )
    path = tmp_path / f"{stage}.yaml"
    path.write_text(
        f"model: {{path: {model}}}\n"
        f"data: {{dataset_dir: {tmp_path}, datasets: [toy], max_seq_len: 64, val_size: 8}}\n"
        f"method: {{stage: {stage}, finetuning: lora}}\n"
        f"train: {{max_steps: {steps}, learning_rate: 5.0e-3, micro_batch_size: 4,"
        " grad_accum: 2, logging_steps: 1, eval_steps: 2}\n" + extra
    )
    return path
