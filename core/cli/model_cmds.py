"""`ftx init-model`: random-initialised models for demos and tests."""

from __future__ import annotations

from pathlib import Path

import click

from ftx.core.cli import cli
from ftx.core.console import results


@cli.command("init-model")
@click.option("--arch", type=click.Choice(["llama", "qwen2"]), default="llama", show_default=True)
@click.option(
    "--size",
    type=click.Choice(["tiny", "small", "0.5b", "1.5b"]),
    default="tiny",
    show_default=True,
    help="tiny 0.8M, small 3.4M parameters; 0.5b and 1.5b: Qwen2.5-0.5B's and -1.5B's shapes.",
)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--vocab-size", type=int, default=1024, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
def init_model(
    arch: str, size: str, out: Path, seed: int, vocab_size: int, dtype: str, force: bool
) -> None:
    """Write a random HF model (config + safetensors) with a small trained BPE tokenizer
    and a chat template. No hub, no framework needed.

    \b
    Example:
      ftx init-model --arch qwen2 --size tiny --out models/tiny-qwen2
    """
    from ftx.core.models.init import init_model as build

    made = build(arch, size, out, seed=seed, vocab_size=vocab_size, dtype=dtype, force=force)
    short = (
        f" (asked for {vocab_size}: the bundled corpus yields no more distinct tokens)"
        if made["vocab"] < vocab_size
        else ""
    )
    results.print(
        f"{made['path']}: {made['arch']} ({made['size']}), {made['parameters']:,} parameters,"
        f" vocabulary {made['vocab']}{short}"
    )
