"""`ftx data export --to mindrecord`: the recipe's prepared rows as MindRecord.

Runs in the core's process: prepares the data (unpacked: legacy MindFormers has no
per-example attention inside a row) and has mindrecord.py write it with
mindspore's FileWriter where the run trains (the mindformers environment, or its image
under a container runtime).
"""

from __future__ import annotations

import json
from pathlib import Path

from ftx.backends.mindformers.translate import MCORE_MODELS
from ftx.core.console import info
from ftx.core.errors import FtxError
from ftx.core.models.architectures import ModelConfig
from ftx.core.recipe.schema import Recipe
from ftx.core.runtime import current as current_runtime


def unpacked_prepared(recipe: Recipe) -> Path:
    """The recipe's prepared rows, unpacked (cached by content hash): MindFormers' rows hold
    one example each (its legacy models keep no examples apart inside a row)."""
    from ftx.core.data.prepare import cached_prepared

    unpacked = recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": False})})
    return cached_prepared(unpacked, say=info)


def export_mindrecord(recipe: Recipe, out: Path) -> str:
    """Write train.mindrecord (+ .db), and val.mindrecord when the recipe holds data out,
    into ``out`` (an empty, staged folder; OUT/plan/data for a plan)."""
    prepared = unpacked_prepared(recipe)
    out.mkdir(parents=True, exist_ok=True)
    code, output = current_runtime().python(
        "mindformers",
        ["-m", "ftx.backends.mindformers.mindrecord", str(prepared), str(out)],
        reads=(prepared,),
        writes=(out,),
        why="to write MindRecord data with mindspore (what finetune.yaml reads)",
    )
    if code != 0:
        raise FtxError(
            f"writing MindRecord failed: {output.strip().splitlines()[-1:]}",
            where=str(out),
            fix="run `ftx env doctor mindformers`",
            exit_code=1,
        )
    return output.strip().splitlines()[-1]


def export_plan_data(recipe: Recipe, out: Path) -> str:
    """OUT/plan/data for ``ftx plan``: the MindRecord files finetune.yaml reads. A model
    folder without a tokenizer (a config-only stand-in for weights elsewhere) cannot be
    tokenised: the folder then holds a note saying how to write the data later."""
    from ftx.core.data.prepare import TOKENIZER_FILES

    model = Path(recipe.model.path)
    if recipe.method.stage not in ("sft", "pt"):
        out.mkdir(parents=True, exist_ok=True)
        (out / "README.txt").write_text(
            f"No MindRecord here: MindFormers 1.9 has no {recipe.method.stage} trainer to read\n"
            "it. ftx's mindformers worker trains this stage from ftx's prepared data (OUT/data).\n"
        )
        return f"no MindRecord: MindFormers trains no {recipe.method.stage}"
    if any((model / name).exists() for name in TOKENIZER_FILES):
        if ModelConfig.read(model).model_type in MCORE_MODELS:
            return export_mcore_jsonl(recipe, out / "mcore")
        return export_mindrecord(recipe, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.txt").write_text(
        f"No MindRecord here: {model} has no tokenizer, so the recipe's data could not be\n"
        "tokenised when this plan was written. With the real model folder in place, run\n"
        "  ftx data export RECIPE --to mindrecord --out OUT/plan/data --force\n"
    )
    info(f"  no MindRecord written: {model} has no tokenizer (see plan/data/README.txt)")
    return "no tokenizer: data not written"


def export_mcore_jsonl(recipe: Recipe, out: Path) -> str:
    """{train,val}.jsonl for the MCore path's HFDataLoader: per row input_ids of
    max_seq_len (pad id after the row), labels shifted one to the left as MCore expects
    (-100 where nothing is learned), loss_mask, position_ids."""
    import numpy as np

    from ftx.core.prepared import IGNORE_INDEX, load_split, read_manifest

    prepared = unpacked_prepared(recipe)
    manifest = read_manifest(prepared)
    width, pad = manifest["max_seq_len"], manifest["pad_token_id"]
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for name in ("train", "val"):
        split = load_split(prepared, name)
        if split is None:
            continue
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for i in range(len(split)):
                ids, labels = split[i]
                row_ids = np.full(width, pad, dtype=np.int64)
                row_ids[: len(ids)] = ids
                targets = np.full(width, IGNORE_INDEX, dtype=np.int64)
                targets[: len(labels) - 1] = labels[1:]
                row = {
                    "input_ids": row_ids.tolist(),
                    "labels": targets.tolist(),
                    "loss_mask": (targets != IGNORE_INDEX).astype(np.int64).tolist(),
                    "position_ids": list(range(width)),
                }
                handle.write(json.dumps(row) + "\n")
        counts.append(f"{len(split)} {name}")
    return f"{out}: {', '.join(counts)} rows (MCore JSON Lines)"
