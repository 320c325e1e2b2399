"""Generate an alpaca-like dataset: instruction/input/output lengths drawn to resemble
Stanford Alpaca's (short instructions, optional inputs, outputs from a few words to a
few hundred, a long tail). Used by the packing check and the data benchmark.

    python bench/make_alpaca_like.py OUT.jsonl [--rows 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = [
    "the",
    "model",
    "data",
    "train",
    "answer",
    "question",
    "write",
    "explain",
    "list",
    "describe",
    "summary",
    "language",
    "example",
    "step",
    "result",
    "value",
    "number",
    "city",
    "river",
    "music",
    "history",
    "science",
    "water",
    "energy",
    "because",
    "however",
    "therefore",
    "first",
    "second",
    "finally",
    "people",
    "world",
    "system",
    "process",
    "simple",
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words))).capitalize() + "."


def row(rng: random.Random) -> dict[str, str]:
    instruction = sentence(rng, int(rng.lognormvariate(2.5, 0.4)))
    has_input = rng.random() < 0.4
    inp = sentence(rng, int(rng.lognormvariate(3.0, 0.7))) if has_input else ""
    output = sentence(rng, int(rng.lognormvariate(4.0, 0.9)))
    return {"instruction": instruction, "input": inp, "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.write_text("".join(json.dumps(row(rng)) + "\n" for _ in range(args.rows)))
    print(f"{args.out}: {args.rows} rows")


if __name__ == "__main__":
    main()
