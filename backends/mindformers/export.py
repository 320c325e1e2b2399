"""`ftx data export --to mindrecord`: the recipe's prepared rows as MindRecord.

Runs in the core's process: prepares the data (unpacked: legacy MindFormers has no
per-example attention inside a row) and has mindrecord.py write it with
mindspore's FileWriter inside the mindformers environment.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ftx.core import envs
from ftx.core.console import info
from ftx.core.errors import FtxError
from ftx.core.recipe.schema import Recipe


def export_mindrecord(recipe: Recipe, out: Path) -> str:
    """Write OUT/train.mindrecord (+ .db) into ``out`` (an empty, staged folder)."""
    from ftx.core.data.prepare import cached_prepared

    unpacked = recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": False})})
    prepared = cached_prepared(unpacked, say=info)
    python = envs.ensure("mindformers")
    result = subprocess.run(
        [str(python), "-m", "ftx.backends.mindformers.mindrecord", str(prepared), str(out)],
        capture_output=True,
        text=True,
        env=envs.process_env("mindformers"),
        cwd=out,  # mindspore writes log folders into the working directory
    )
    if result.returncode != 0:
        raise FtxError(
            f"writing MindRecord failed: {result.stderr.strip().splitlines()[-1:]}",
            where=str(out),
            fix="run `ftx env doctor mindformers`",
            exit_code=1,
        )
    return result.stdout.strip().splitlines()[-1]
