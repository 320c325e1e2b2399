"""Write a prepared split as MindRecord for MindFormers (runs in the mindformers env).

    python -m ftx.backends.mindformers.mindrecord PREPARED_DIR OUT_DIR [--split train ...]

Training rows are ``max_seq_len + 1`` int32 tokens (``input_ids``, padded with the pad
id) and aligned ``labels`` (-100 on masked and padded positions): MindFormers' legacy
models drop the last input token and the first label themselves while training. Rows of
every other split (``val``) are ``max_seq_len`` wide: the evaluation network takes its
rows whole (its causal mask is seq_length square) and its perplexity metric shifts the
labels itself. No token is lost either way: an example holds at most max_seq_len tokens.
`ftx data export` stages the folder and renames it into place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ftx.core.prepared import IGNORE_INDEX, load_split, read_manifest

SCHEMA = {"input_ids": {"type": "int32", "shape": [-1]}, "labels": {"type": "int32", "shape": [-1]}}


def write_mindrecord(prepared: Path, out: Path, split: str = "train") -> int:
    """Write OUT/<split>.mindrecord (+ .db) into the folder ``out``; return the row count."""
    from mindspore.mindrecord import FileWriter

    manifest = read_manifest(prepared)
    rows = load_split(prepared, split)
    if rows is None:
        raise SystemExit(f"{prepared}: no '{split}' split")
    if rows.packed:
        raise SystemExit(
            f"{prepared}: packed rows cannot be written as legacy MindRecord (no per-example"
            " attention there); prepare with data.packing=false"
        )
    width = manifest["max_seq_len"] + (1 if split == "train" else 0)
    pad = manifest["pad_token_id"]
    out.mkdir(parents=True, exist_ok=True)
    writer = FileWriter(str(out / f"{split}.mindrecord"), shard_num=1, overwrite=True)
    writer.add_schema(SCHEMA, "ftx prepared data")
    batch = []
    for i in range(len(rows)):
        ids, labels = rows[i]
        input_ids = np.full(width, pad, dtype=np.int32)
        target = np.full(width, IGNORE_INDEX, dtype=np.int32)
        input_ids[: len(ids)] = ids
        target[: len(labels)] = labels
        batch.append({"input_ids": input_ids, "labels": target})
        if len(batch) == 1000:
            writer.write_raw_data(batch)
            batch = []
    if batch:
        writer.write_raw_data(batch)
    writer.commit()
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", action="append", help="default: train, and val if any")
    args = parser.parse_args()
    splits = args.split or ["train", *(["val"] if load_split(args.prepared, "val") else [])]
    counts = [f"{write_mindrecord(args.prepared, args.out, s)} {s}" for s in splits]
    print(f"{', '.join(counts)} rows")  # the caller names the folder: this one may be staged


if __name__ == "__main__":
    main()
