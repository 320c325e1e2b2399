"""The preference quickstart on every backend: does DPO visibly learn, on each?

    .venv/bin/python bench/quickstart_dpo.py                  # torch, paddle, mindformers
    .venv/bin/python bench/quickstart_dpo.py --backends torch

Runs ``recipes/quickstart_dpo.yaml`` (the small random Llama, made once under
.ftx/models/quickstart-llama as `make run` makes it) and prints, per backend, the reward
accuracy and margin of the first and the last logged steps, the held-out exact match
before and after training, the final loss and the wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FTX = Path(sys.executable).with_name("ftx")
MODEL = ROOT / ".ftx/models/quickstart-llama"


def run(backend: str, out: Path) -> dict:
    start = time.time()
    result = subprocess.run(
        [str(FTX), "run", "recipes/quickstart_dpo.yaml", "--backend", backend, "--out",
         str(out), "--force"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"{backend}: exit {result.returncode}\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    record = json.loads((out / "run.json").read_text())
    return {
        "backend": backend,
        "steps": logged[-1]["step"],
        "accuracy": (logged[0]["rewards/accuracies"], logged[-1]["rewards/accuracies"]),
        "margin": (logged[0]["rewards/margins"], logged[-1]["rewards/margins"]),
        "exact_match": (
            record["evaluation"]["before"]["exact_match"],
            record["evaluation"]["after"]["exact_match"],
        ),
        "loss": (logged[0]["loss"], logged[-1]["loss"]),
        "seconds": round(time.time() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="torch,paddle,mindformers")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ftx-quickstart-dpo"))
    args = parser.parse_args()
    if not (MODEL / "config.json").exists():
        subprocess.run([str(FTX), "init-model", "--arch", "llama", "--size", "small", "--out",
                        str(MODEL)], check=True)  # fmt: skip
    found = [run(b, args.out / b) for b in args.backends.split(",")]
    print("| backend | steps | reward accuracy (first -> last logged) | reward margin"
          " | held-out exact match | loss | wall time |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in found:
        print(f"| {r['backend']} | {r['steps']} | {r['accuracy'][0]:.3f} -> {r['accuracy'][1]:.3f}"
              f" | {r['margin'][0]:.4f} -> {r['margin'][1]:.4f}"
              f" | {r['exact_match'][0]:.0%} -> {r['exact_match'][1]:.0%}"
              f" | {r['loss'][0]:.4f} -> {r['loss'][1]:.4f} | {r['seconds']} s |")  # fmt: skip


if __name__ == "__main__":
    main()
