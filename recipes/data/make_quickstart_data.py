"""Generate the quickstart datasets: reverse a short sequence of letters.

A task a tiny model learns on a CPU in a couple of minutes, and one whose
held-out split is new sequences (not seen in training), so exact match on it
shows learning rather than memorisation. The preference quickstart
(quickstart_dpo.yaml) ranks the same training sequences: the reversal is chosen,
the letters as given (the answer of a model that only copies) rejected.
Deterministic: rerunning writes the same files.

    python recipes/data/make_quickstart_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
HERE = Path(__file__).resolve().parent


def sequences(rng: random.Random, count: int) -> list[str]:
    seen: set[str] = set()
    while len(seen) < count:
        seen.add(" ".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5))))
    return sorted(seen)


def row(seq: str) -> dict[str, str]:
    return {
        "instruction": "Reverse the letters.",
        "input": seq,
        "output": " ".join(reversed(seq.split())),
    }


def pair(seq: str) -> dict[str, str]:
    """A ranked row: the reversal chosen, the letters as given rejected (a palindrome's
    copy would be the right answer: its first letter moved on by one instead)."""
    chosen = " ".join(reversed(seq.split()))
    rejected = seq
    if rejected == chosen:
        first = LETTERS[(LETTERS.index(seq[0]) + 1) % len(LETTERS)]
        rejected = first + chosen[1:]
    return {"instruction": "Reverse the letters.", "input": seq, "chosen": chosen,
            "rejected": rejected}  # fmt: skip


def main() -> None:
    rng = random.Random(1234)
    all_seqs = sequences(rng, 2200)
    rng.shuffle(all_seqs)
    held_out, train = all_seqs[:100], all_seqs[100:]
    for name, seqs in (("quickstart_train.jsonl", train), ("quickstart_heldout.jsonl", held_out)):
        lines = "".join(json.dumps(row(s)) + "\n" for s in seqs)
        (HERE / name).write_text(lines)
        print(f"{HERE / name}: {len(seqs)} rows")
    (HERE / "quickstart_dpo_train.jsonl").write_text(
        "".join(json.dumps(pair(s)) + "\n" for s in train)
    )
    print(f"{HERE / 'quickstart_dpo_train.jsonl'}: {len(train)} pairs")


if __name__ == "__main__":
    main()
