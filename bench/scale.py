"""A 0.5B model through every backend on this machine's CPU, each beside its framework's
own trainer: how ftx's cost grows from the 3.4M-parameter figures.

    .venv/bin/python bench/scale.py [--backends torch paddle mindformers]
                                    [--finetuning lora full] [--steps 2] [--batch 1]
                                    [--workdir /tmp/ftx-bench-scale]

The model is `ftx init-model --size 0.5b`: Qwen2.5-0.5B's shape (24 layers, hidden 896,
151,936 embedding rows tied to the output, 494M parameters), random, fp32; Qwen2 where the
backend builds it on a CPU (torch, mindformers), the same shape as a Llama (paddle: on CPU
PaddleFormers builds Llama-architecture models only). Alpaca-like rows whose answers run
past 512 tokens, every example cut to exactly 512 (the same work on both sides, whatever
order each trainer draws the rows in), --batch examples a step, `train.max_steps` = 1 +
--steps. For each backend and fine-tuning method, two runs, each a fresh process, one
after the other:
  ftx            `ftx run --backend B` (ftx's training loop)
  native         torch: transformers' Trainer (+ peft) on ftx's prepared examples;
                 paddle, mindformers: `ftx run --trainer native` (PaddleFormers' and
                 MindFormers' own Trainer on the plan ftx writes)
Measured: real tokens/s of the steps after the first (metrics.jsonl; the Trainer's own
clock), seconds from the command's start to the end of the first optimizer step, and the
peak RSS of the run's whole process tree (bench/harness.py); the model's own fp32 weights
for scale. Target: ftx within 5% of the native tokens/s and 10% of its peak memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
NATIVE = {
    "torch": "transformers Trainer",
    "paddle": "PaddleFormers Trainer",
    "mindformers": "MindFormers Trainer",
}


@dataclass
class Result:
    backend: str
    finetuning: str
    side: str
    tokens_per_s: float
    first_step_s: float
    peak_gb: float
    note: str = ""


def write_long_rows(path: Path, rows: int) -> None:
    """Alpaca-like rows whose answers run past 512 tokens, so that every example is cut
    to exactly 512: every micro-batch then has the same shape whichever rows a trainer
    draws (each trainer shuffles in its own order, and a padded batch costs what its
    longest row costs), and both sides of a pair do the same work."""
    import random

    from make_alpaca_like import sentence

    rng = random.Random(0)
    with path.open("w") as handle:
        for _ in range(rows):
            row = {"instruction": sentence(rng, 12), "input": "", "output": sentence(rng, 700)}
            handle.write(json.dumps(row) + "\n")


def failure(out: Path, said: str) -> str:
    """One line on why a run failed (``said``: what the command printed): killed with
    SIGKILL (the kernel's out-of-memory killer, here), or the error."""
    log = out / "logs" / "launch.log"
    text = said + (log.read_text(errors="replace") if log.exists() else "")
    if "killed with SIGKILL" in " ".join(said.split()) or "exit code -9" in text:
        return "killed (out of memory)"
    lines = [line for line in text.splitlines() if line.strip()]
    return f"failed: {lines[-1][:160] if lines else 'see ' + str(log)}"


def first_row_watch(metrics: Path, started: float) -> tuple[threading.Event, list[float]]:
    """Note when ``metrics`` first holds a logged step (seconds after ``started``)."""
    stop, seen = threading.Event(), []

    def loop() -> None:
        while not stop.is_set() and not seen:
            try:
                if '"loss"' in metrics.read_text():
                    seen.append(time.time() - started)
            except OSError:
                pass
            stop.wait(0.05)

    threading.Thread(target=loop, daemon=True).start()
    return stop, seen


def main() -> None:
    from harness import header, machine, measure, sh
    from steps import TRAINER, ftx_command, steady_rate

    from ftx.core import envs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "paddle", "mindformers"])
    parser.add_argument("--finetuning", nargs="+", default=["lora", "full"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--size", default="0.5b", choices=["tiny", "small", "0.5b", "1.5b"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-scale"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ftx = ftx_command()
    data = work / "long_rows.jsonl"
    write_long_rows(data, args.rows)
    models = {}
    for arch in ("qwen2", "llama"):
        models[arch] = work / f"{arch}-{args.size}"
        if not (models[arch] / "config.json").exists():
            sh(*ftx, "init-model", "--arch", arch, "--size", args.size, "--out",
               str(models[arch]), "--force")  # fmt: skip
    weights_gb = {a: sum(p.stat().st_size for p in m.glob("*.safetensors")) / 2**30
                  for a, m in models.items()}  # fmt: skip
    started = machine()
    results: list[Result] = []
    for backend in args.backends:
        arch = "llama" if backend == "paddle" else "qwen2"
        envs.ensure(backend, "(the scale benchmark)")
        env = envs.process_env(backend)
        for finetuning in args.finetuning:
            recipe = work / f"{backend}-{finetuning}.yaml"
            recipe.write_text(
                f"model: {{path: {models[arch]}}}\n"
                f"data: {{datasets: [{data}], max_seq_len: 512, val_size: 0}}\n"
                f"method: {{finetuning: {finetuning}}}\n"
                f"train: {{max_steps: {1 + args.steps}, micro_batch_size: {args.batch},"
                " learning_rate: 1.0e-5, scheduler: constant, logging_steps: 1,"
                " precision: fp32}\n"
            )
            for side in ("ftx", "native"):
                out = work / "runs" / f"{backend}-{finetuning}-{side}"
                if side == "native" and backend == "torch":
                    prepared = work / "prepared"
                    sh(
                        *ftx,
                        "-q",
                        "data",
                        "prepare",
                        str(recipe),
                        "--out",
                        str(prepared),
                        "--force",
                    )
                    python = str(envs.ensure("torch"))
                    command = [python, "-c", TRAINER, str(prepared), str(models[arch]), str(out),
                               str(args.batch), "padded", finetuning, "1", str(args.steps),
                               "fp32", "8", "16", "sdpa"]  # fmt: skip
                else:
                    extra = ["--trainer", "native"] if side == "native" else ["--trainer", "ftx"]
                    command = [*ftx, "-q", "run", str(recipe), "--backend", backend, "--out",
                               str(out), "--force", *extra]  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)  # --force keeps an old run until the end
                at = time.time()
                stop, seen = first_row_watch(out / "metrics.jsonl", at)
                try:
                    sample = measure(command, env if command[0] != ftx[0] else None)
                except SystemExit as error:
                    stop.set()
                    reason = failure(out, str(error))
                    results.append(Result(backend, finetuning, side, 0, 0, 0, reason))
                    print(f"  {backend} {finetuning} {side}: failed", flush=True)
                    continue
                stop.set()
                if side == "native" and backend == "torch":
                    found = json.loads(sample.output.strip().splitlines()[-1])
                    rate = found["tokens"] / found["seconds"]
                    first = found["first_step_at"] - at
                else:
                    rate, _ = steady_rate(out / "metrics.jsonl", 1)
                    first = seen[0] if seen else float("nan")
                results.append(Result(backend, finetuning, side, rate, first,
                                      sample.peak_rss_mb / 1e3))  # fmt: skip
                peak = sample.peak_rss_mb / 1e3
                print(f"  {backend} {finetuning} {side}: {rate:,.0f} tokens/s, first step"
                      f" {first:.0f} s, peak {peak:.1f} GB", flush=True)  # fmt: skip

    print()
    print(header(f"bench/scale.py --steps {args.steps} --batch {args.batch}", started))
    print(
        f"A random Qwen2.5-{args.size.upper()}-shaped model (fp32 weights: qwen2"
        f" {weights_gb['qwen2']:.2f} GiB, llama {weights_gb['llama']:.2f} GiB), alpaca-like rows"
        f" of exactly 512 tokens (cut), {args.batch} a step, fp32 on the CPU; tokens/s over"
        f" {args.steps} steps after the first; one run each\n"
    )
    print("| backend | method | run | real tokens/s | first step (s) | peak RSS (GB) | vs native |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    native = {(r.backend, r.finetuning): r for r in results if r.side == "native"}
    for r in results:
        partner = native.get((r.backend, r.finetuning))
        ratio = ""
        if r.side == "ftx" and partner and partner.tokens_per_s and r.tokens_per_s:
            ratio = (f"{r.tokens_per_s / partner.tokens_per_s:.2f}x speed,"
                     f" {r.peak_gb / partner.peak_gb:.2f}x memory")  # fmt: skip
        label = NATIVE[r.backend] if r.side == "native" else "ftx"
        if r.note:
            print(f"| {r.backend} | {r.finetuning} | {label} | - | - | - | {r.note} |")
            continue
        print(f"| {r.backend} | {r.finetuning} | {label} | {r.tokens_per_s:,.0f} |"
              f" {r.first_step_s:.0f} | {r.peak_gb:.1f} | {ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
