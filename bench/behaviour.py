"""Behaviour unchanged, shown: record the quickstart (every step logged) and a short LoRA run
on every backend, then compare two recordings row by row.

    .venv/bin/python bench/behaviour.py record /tmp/before               # at one commit
    .venv/bin/python bench/behaviour.py record /tmp/after                # at another
    .venv/bin/python bench/behaviour.py compare /tmp/before /tmp/after   # the table

``record --ftx PATH`` runs another checkout's ``ftx`` (its own virtual environment), so
both recordings come from the same command. The comparison prints, per backend and run,
how many metrics rows differ (every key but tokens_per_s, which is a clock), whether
eval.json is the same, and whether every safetensors file of OUT/final has the same
bytes; it exits with 1 when anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("torch", "paddle", "mindformers")
RUNS = {
    "quickstart": ["train.logging_steps=1"],
    "lora": [
        "train.logging_steps=1",
        "train.epochs=null",
        "train.max_steps=20",
        "method.finetuning=lora",
        "output.save_format=both",
        "output.merge_lora=true",
        "train.save_steps=10",
    ],
}


def record(folder: Path, ftx: Path, backends: list[str]) -> None:
    for backend in backends:
        for run, overrides in RUNS.items():
            out = folder / backend / run
            start = time.time()
            result = subprocess.run(
                [str(ftx), "run", str(ROOT / "recipes/quickstart.yaml"), "--backend", backend,
                 "--out", str(out), "--force", *overrides],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            (folder / backend).mkdir(parents=True, exist_ok=True)
            (folder / backend / f"{run}.log").write_text(result.stdout + result.stderr)
            print(f"{backend} {run}: exit {result.returncode}, {time.time() - start:.0f} s")
            if result.returncode != 0:
                sys.exit(result.returncode)


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


def digests(final: Path) -> dict[str, str]:
    return {
        str(path.relative_to(final)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(final.rglob("*.safetensors"))
    }


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def compare(before: Path, after: Path) -> int:
    print("| backend | run | metrics rows | rows differing | eval.json | OUT/final tensors |")
    print("| --- | --- | --- | --- | --- | --- |")
    failed = 0
    for backend in sorted(p.name for p in after.iterdir() if p.is_dir()):
        for run in RUNS:
            a, b = before / backend / run, after / backend / run
            if not (a / "metrics.jsonl").exists() or not (b / "metrics.jsonl").exists():
                continue
            ra, rb = metrics(a), metrics(b)
            differing = sum(x != y for x, y in zip(ra, rb, strict=False)) + abs(len(ra) - len(rb))
            evals = [
                (p / "eval.json").read_text() if (p / "eval.json").exists() else "" for p in (a, b)
            ]
            da, db = digests(a / "final"), digests(b / "final")
            files = (
                "identical" if da == db else f"{sum(da.get(k) != v for k, v in db.items())} differ"
            )
            same_eval = "identical" if evals[0] == evals[1] else "differs"
            print(f"| {backend} | {run} | {len(rb)} | {differing} | {same_eval} |"
                  f" {files} ({len(db)} files) |")  # fmt: skip
            failed += differing or evals[0] != evals[1] or da != db
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the quickstart and a LoRA run on each backend")
    rec.add_argument("folder", type=Path)
    rec.add_argument("--ftx", type=Path, default=ROOT / ".venv/bin/ftx")
    rec.add_argument("--backends", default=",".join(BACKENDS))
    cmp = sub.add_parser("compare", help="compare two recordings")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.folder, args.ftx, args.backends.split(","))
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
