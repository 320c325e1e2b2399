"""The paddle backend's overhead: ftx's paddle worker vs PaddleFormers' own trainer on the
same plan, on this machine's CPU.

    .venv/bin/python bench/train_paddle.py [--rows 128] [--batch 1] [--repeats 3]
                                           [--workdir /tmp/ftx-bench-paddle]

One recipe (llama "small", 3.4M parameters, fp32, alpaca-like rows, max_seq_len 2048 so that
no row is cut or dropped, one epoch, micro batch --batch, no accumulation, no evaluation, no
checkpoints) runs three ways, interleaved (bench/harness.py), each --repeats times in a
fresh process:
  ftx paddle           `ftx run --backend paddle` (ftx's loop on the core's tokens)
  ftx native           `ftx run --backend paddle --trainer native` (PaddleFormers' Trainer on
                       the plan, fed the core's tokens, with ftx's callback and launcher)
  paddleformers-cli    `paddleformers-cli train OUT/plan/paddleformers.yaml` on the files
                       that same `ftx plan` wrote (its own data pipeline and Trainer), with the
                       CPU settings PaddleFormers needs here (see the README)
Why batch 1 and 2048: PaddleFormers drops rows longer than max_seq_len where ftx truncates
them, and it groups rows by length where ftx keeps its seeded order, so with longer rows cut
or bigger batches the two sides would train different token counts. Here both train the same
rows, unpadded, once. Measured: rows per second of the training loop alone (ftx:
OUT/logs/train_timing.json; PaddleFormers: its train_results.json), median (min-max); the
ratio is each row / paddleformers-cli (ftx native vs paddleformers-cli: the cost of ftx's
callbacks and launcher around the same Trainer). PaddleFormers' own "tokens per second"
counts max_seq_len per row, so the real tokens/s of every side is ftx's real token count of
the epoch (the same conversations through the same chat template) over its loop time.
Target: ftx >= 0.95x (overhead <= 5%).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")
sys.path.insert(0, str(ROOT / "bench"))


NATIVE_RUN = """
import json, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
done = subprocess.run(sys.argv[2:], cwd=out, capture_output=True, text=True)
if done.returncode != 0:
    sys.exit((out / "paddleformers_dist_log/workerlog.0").read_text()[-3000:])
print(json.dumps(json.loads((out / "native/train_results.json").read_text())))
"""


def main() -> None:
    from harness import FTX_RUN, Run, header, interleave, machine, sh, training_bench

    args, model, data = training_bench(__doc__, 128, "/tmp/ftx-bench-paddle", batch=1)
    work = args.workdir
    if "fuse_rms_norm" not in (config := json.loads((model / "config.json").read_text())):
        # PaddleFormers' fused RMSNorm kernel is GPU-only; ftx's worker sets this itself.
        (model / "config.json").write_text(json.dumps({**config, "fuse_rms_norm": False}))
    recipe = work / "bench.yaml"
    recipe.write_text(
        f"model: {{path: {model}, template: auto}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 2048, val_size: 0}}\n"
        "method: {finetuning: full}\n"
        f"train: {{epochs: 1, micro_batch_size: {args.batch}, learning_rate: 1.0e-3,"
        " logging_steps: 1000}\n"
    )
    native = work / "native-plan"
    shutil.rmtree(native, ignore_errors=True)
    sh(str(FTX), "-q", "plan", str(recipe), "--backend", "paddle", "--out", str(native))

    sys.path.insert(0, str(ROOT))
    from ftx.core import envs

    envs.ensure("paddle")
    env = {**envs.process_env("paddle"), "CUDA_VISIBLE_DEVICES": "0"}

    def fresh_native() -> None:
        for leftover in ("native", "paddleformers_dist_log"):
            shutil.rmtree(native / leftover, ignore_errors=True)

    ftx_out, native_out = work / "ftx", work / "ftx-native"
    ftx_run = [str(FTX), "-q", "run", str(recipe), "--backend", "paddle"]
    native_run = [*ftx_run, "--trainer", "native", "--out", str(native_out), "--force"]
    ftx_run += ["--out", str(ftx_out), "--force"]
    cli = ["paddleformers-cli", "train", "plan/paddleformers.yaml", "device=cpu"]
    cli += ["_attn_implementation=eager"]
    runs = [
        Run(
            "ftx run --backend paddle",
            [sys.executable, "-c", FTX_RUN, *ftx_run, str(ftx_out / "run.json")],
        ),
        Run(
            "ftx run --backend paddle --trainer native",
            [sys.executable, "-c", FTX_RUN, *native_run, str(native_out / "run.json")],
        ),
        Run(
            "paddleformers-cli train (the same plan)",
            [sys.executable, "-c", NATIVE_RUN, str(native), *cli],
            env=env,
            before=fresh_native,
        ),
    ]
    started = machine()
    interleave(runs, args.repeats)

    def results(run: Run) -> list[dict]:
        return [json.loads(s.output.strip().splitlines()[-1]) for s in run.samples]

    def ftx_rates(run: Run) -> tuple[list[float], list[float]]:
        found = results(run)
        rows = sorted(r["steps"] * args.batch / r["train_seconds"] for r in found)
        return rows, sorted(r["tokens"] / r["train_seconds"] for r in found)

    ftx_rows, ftx_tokens = ftx_rates(runs[0])
    ours_rows, ours_tokens = ftx_rates(runs[1])
    tokens = results(runs[0])[0]["tokens"]  # real tokens of the epoch, the same everywhere
    native = results(runs[2])
    native_rows = sorted(r["train_samples_per_second"] for r in native)
    native_tokens = sorted(tokens / r["train_runtime"] for r in native)
    mid = args.repeats // 2
    print(header(f"bench/train_paddle.py --rows {args.rows} --repeats {args.repeats}", started))
    print(
        f"Paddle backend on CPU (paddlepaddle 3.3.1, PaddleFormers 1.2.0): {args.rows}"
        f" alpaca-like rows ({tokens:,} tokens, none cut), llama 'small' (3.4M parameters),"
        f" fp32, one epoch, batch {args.batch}; the training loop alone, median (min-max) of"
        f" {args.repeats} interleaved runs, {os.cpu_count()} CPUs\n"
    )
    print("| run | rows/s | real tokens/s | ratio |")
    print("| --- | --- | --- | --- |")
    for label, rows, rates in (
        (runs[0].label, ftx_rows, ftx_tokens),
        (runs[1].label, ours_rows, ours_tokens),
        (runs[2].label, native_rows, native_tokens),
    ):
        print(
            f"| {label} | {rows[mid]:.2f} ({rows[0]:.2f}-{rows[-1]:.2f}) |"
            f" {rates[mid]:,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f}) |"
            f" {rows[mid] / native_rows[mid]:.2f}x |"
        )


if __name__ == "__main__":
    main()
