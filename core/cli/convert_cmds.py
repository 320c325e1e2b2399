"""`ftx convert`: checkpoints between Hugging Face, Paddle and MindSpore formats."""

from __future__ import annotations

from pathlib import Path

import click

from ftx.core.cli import cli
from ftx.core.console import results


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["hf", "paddle", "mindspore"]), required=True)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["safetensors", "ckpt"]),
    default="safetensors",
    show_default=True,
    help="Weight file format (ckpt: MindSpore's protobuf checkpoint).",
)
@click.option("--verify", is_flag=True, help="Re-read the output and check every tensor.")
@click.option("--force", is_flag=True, help="Replace a non-empty destination.")
def convert(src: Path, dst: Path, target: str, file_format: str, verify: bool, force: bool) -> None:
    """Convert a checkpoint folder tensor by tensor (memory stays about one tensor).

    \b
    Example:
      ftx convert ./llama-hf ./llama-paddle --to paddle --verify
      ftx convert ./llama-hf ./llama-ms --to mindspore --format ckpt
    """
    from ftx.core.convert.convert import convert as run

    summary = run(src, dst, target, file_format=file_format, force=force, verify=verify)
    checked = f", {summary['verified']} verified" if verify else ""
    results.print(
        f"{dst}: {summary['from']} -> {summary['to']}, {summary['tensors']} tensors,"
        f" {summary['bytes'] / 2**20:.1f} MiB{checked}"
    )


@cli.command("merge-lora")
@click.argument("base", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("adapter", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
def merge_lora(base: Path, adapter: Path, out: Path, force: bool) -> None:
    """Fold a PEFT LoRA adapter into the base weights (in float32), keeping the base's format.

    \b
    Example:
      ftx merge-lora ./llama-hf runs/lora/final ./llama-merged
    """
    from ftx.core.convert.merge_lora import merge_lora as run

    summary = run(base, adapter, out, force=force)
    results.print(
        f"{out}: {summary['merged']} weights merged (scaling {summary['scaling']:g}),"
        f" {summary['format']} format"
    )
