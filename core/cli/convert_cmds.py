"""`ftx convert`: checkpoints between Hugging Face, Paddle and MindSpore formats."""

from __future__ import annotations

from pathlib import Path

import click

from ftx.core.cli import cli
from ftx.core.console import results
from ftx.core.convert.names import FAMILIES


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["hf", "paddle", "mindspore"]), required=True)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["safetensors", "ckpt", "pdparams"]),
    default="safetensors",
    show_default=True,
    help="Weight file format (ckpt: MindSpore's protobuf checkpoint; pdparams: Paddle's"
    " pickle, written in one piece).",
)
@click.option("--verify", is_flag=True, help="Re-read the output and check every tensor.")
@click.option("--force", is_flag=True, help="Replace a non-empty destination.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow reading .pdparams files (pickles; loading one can run code).",
)
@click.option(
    "--model-type",
    type=click.Choice(sorted(FAMILIES)),
    help="The base model's family, for an adapter whose config does not lead to it.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The model's config.json, or the MindFormers YAML it was trained with"
    " (default: SRC/config.json, else the one YAML in SRC).",
)
def convert(
    src: Path,
    dst: Path,
    target: str,
    file_format: str,
    verify: bool,
    force: bool,
    trust_pickle: bool,
    model_type: str | None,
    config_path: Path | None,
) -> None:
    """Convert a checkpoint or LoRA adapter folder tensor by tensor (memory stays about
    one tensor). Sources: safetensors, .ckpt (incl. per-rank data-parallel folders),
    .pdparams (incl. tensor-parallel sets, merged), pytorch_model*.bin (needs torch).

    \b
    Example:
      ftx convert ./llama-hf ./llama-paddle --to paddle --verify
      ftx convert ./llama-hf ./llama-ms --to mindspore --format ckpt
      ftx convert ./llama-paddle ./llama-hf2 --to hf
      ftx convert runs/lora/final ./lora-paddle --to paddle
    """
    from ftx.core.convert.convert import convert as run

    summary = run(
        src,
        dst,
        target,
        file_format=file_format,
        force=force,
        verify=verify,
        trust_pickle=trust_pickle,
        model_type=model_type,
        config_path=config_path,
    )
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
@click.option("--trust-pickle", is_flag=True, help="Allow reading .pdparams files.")
def merge_lora(base: Path, adapter: Path, out: Path, force: bool, trust_pickle: bool) -> None:
    """Fold a LoRA adapter (PEFT, PaddleNLP or MindFormers) into the base weights in
    float32, keeping the base's format.

    \b
    Example:
      ftx merge-lora ./llama-hf runs/lora/final ./llama-merged
    """
    from ftx.core.convert.merge_lora import merge_lora as run

    summary = run(base, adapter, out, force=force, trust_pickle=trust_pickle)
    results.print(
        f"{out}: {summary['merged']} weights merged (scaling {summary['scaling']:g}),"
        f" {summary['format']} format"
    )
