"""Cross-backend parity: the same recipe, weights and batches on torch, paddle and
mindformers for 20 steps, full fine-tuning and LoRA, through `ftx compare`.

    .venv/bin/python bench/parity.py [--steps 20] [--workdir /tmp/ftx-bench-parity]

The model is the 3.4M-parameter `small` Llama (`ftx init-model`), the data the quickstart's
(max_seq_len 64, micro batch 8, accumulation 2, lr 1e-3 cosine with warm-up), fp32 on this
machine's CPU. Prints, per method, the worst relative loss difference over the backends at
the first step and over all steps, the final losses, and the exports' logits difference;
the plots go to bench/figures/parity-<method>.png (the README shows them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")
FIGURES = ROOT / "bench" / "figures"
BACKENDS = "torch,paddle,mindformers"
METHODS = {
    "full": [],
    "lora": ["method.finetuning=lora", "method.lora.rank=8", "method.lora.alpha=16"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftx-bench-parity"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        subprocess.run(
            [str(FTX), "init-model", "--arch", "llama", "--size", "small", "--out", str(model)],
            check=True,
            capture_output=True,
        )
    recipe = work / "parity.yaml"
    data = ROOT / "recipes" / "data" / "quickstart_train.jsonl"
    recipe.write_text(
        f"model: {{path: {model}, template: auto}}\n"
        f"data: {{datasets: [{{path: {data}, format: alpaca}}], max_seq_len: 64, val_size: 0}}\n"
        "method: {finetuning: full}\n"
        "train: {learning_rate: 1.0e-3, scheduler: cosine, warmup_steps: 2,"
        " micro_batch_size: 8, grad_accum: 2}\n"
    )
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"bench/parity.py --steps {args.steps} (commit {commit})\n")
    print("| method | backends | steps | first-step max rel. diff | worst step max rel. diff |"
          " final losses | exports' logits max abs diff | verdict |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    FIGURES.mkdir(parents=True, exist_ok=True)
    for method, overrides in METHODS.items():
        out = work / method
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(
            [str(FTX), "-q", "compare", str(recipe), *overrides, "--backends", BACKENDS,
             "--steps", str(args.steps), "--out", str(out)],
            capture_output=True, text=True,
        )  # fmt: skip
        found = json.loads((out / "comparison.json").read_text())
        steps = found["steps"]
        worst = max(steps, key=lambda s: s["max_relative"])
        finals = ", ".join(f"{k} {v:.6f}" for k, v in steps[-1]["losses"].items())
        verdict = "pass" if found["passed"] and done.returncode == 0 else "FAIL"
        print(
            f"| {method} | {BACKENDS} | {len(steps)} | {steps[0]['max_relative']:.1e} |"
            f" {worst['max_relative']:.1e} (step {worst['step']}) | {finals} |"
            f" {found['logits_max_diff']:.1e} | {verdict} |"
        )
        shutil.copy(out / "comparison.png", FIGURES / f"parity-{method}.png")


if __name__ == "__main__":
    main()
