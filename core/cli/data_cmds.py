"""`ftx data prepare|show|stats`: the prepared dataset every backend trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table
from rich.text import Text

from ftx.core.cli import cli
from ftx.core.console import info, lead, results
from ftx.core.data.sources import input_paths
from ftx.core.fsutil import claim_destination
from ftx.core.prepared import IGNORE_INDEX, FeedbackSplit, PairedSplit
from ftx.core.recipe import load_recipe
from ftx.core.registry import exporters


@cli.group()
def data() -> None:
    """Prepare datasets once (tokenise, mask, pack) and inspect the result.

    \b
    Example:
      ftx data prepare recipes/quickstart.yaml --out /tmp/qs-data
      ftx data show /tmp/qs-data -n 2
    """


@data.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
def prepare(recipe: Path, overrides: tuple[str, ...], out: Path, force: bool) -> None:
    """Write the prepared dataset (numpy arrays + manifest.json) to --out.

    \b
    Example:
      ftx data prepare recipes/quickstart.yaml data.packing=true --out /tmp/qs-data
    """
    from ftx.core.data.prepare import prepared_data

    loaded = load_recipe(recipe, overrides)
    claim_destination(out, force=force, inputs=input_paths(loaded.recipe, loaded.source))
    manifest = prepared_data(loaded.recipe, out)
    results.print(f"{out}: {json.dumps(manifest['splits'])}")


def _split(folder: Path, name: str) -> Any:
    """A split of a prepared folder (None when absent); damaged arrays are an FtxError."""
    from ftx.core.errors import FtxError
    from ftx.core.prepared import load_split

    try:
        return load_split(folder, name)
    except (ValueError, OSError, EOFError) as exc:
        raise FtxError(
            f"the '{name}' split cannot be read ({exc})",
            where=str(folder / name),
            fix="prepare the data again with `ftx data prepare --force`",
        ) from None


def _resolve(source: Path, overrides: tuple[str, ...]) -> Path:
    """A prepared folder as is, or a recipe prepared into the cache first."""
    if source.is_dir():
        return source
    from ftx.core.data.prepare import cached_prepared

    return cached_prepared(load_recipe(source, overrides).recipe, say=info)


@data.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.argument("overrides", nargs=-1)
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many examples.")
@click.option("--split", default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def show(source: Path, overrides: tuple[str, ...], count: int, split: str, as_json: bool) -> None:
    """Print prepared examples: text with the learned tokens highlighted, or --json.

    \b
    --json prints {"input_ids": [...], "labels": [...]} per example (labels aligned
    with input_ids, not shifted, -100 where masked) plus position_ids when packed, and
    kto_tag with the KL row (kl_input_ids, kl_labels) for KTO rows; a preference pair
    prints chosen_input_ids, chosen_labels, rejected_input_ids and rejected_labels
    (LLaMA-Factory's names).
    Example:
      ftx data show recipes/quickstart.yaml -n 1 --json
    """
    from ftx.core.prepared import read_manifest

    folder = _resolve(source, overrides)
    read_manifest(folder)
    rows = _split(folder, split)
    if rows is None:
        raise click.BadParameter(f"{folder} has no '{split}' split", param_hint="--split")
    if as_json:
        for i in range(min(count, len(rows))):
            click.echo(json.dumps(_as_json(rows, i)))
        return
    from transformers import AutoTokenizer

    # The recipe's model when given a recipe; a cached folder may have been prepared for
    # another copy of the same tokenizer, so its manifest path is only a fallback.
    if source.is_dir():
        tokenizer_dir = Path(read_manifest(folder)["tokenizer"])
    else:
        tokenizer_dir = Path(load_recipe(source, overrides).recipe.model.path)
    if not tokenizer_dir.is_dir():
        from ftx.core.errors import FtxError

        raise FtxError(
            f"the tokenizer this data was prepared with is gone ({tokenizer_dir})",
            where=str(folder / "manifest.json"),
            fix="show the data through its recipe instead (ftx data show RECIPE), or use --json",
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tags = rows.column("kto_tag")
    for i in range(min(count, len(rows))):
        if isinstance(rows, PairedSplit):
            (chosen, chosen_labels), (rejected, rejected_labels) = rows[i]
            prompt = int(rows.column("prompt_lengths")[i])
            results.print(lead(f"--- pair {i} (prompt {prompt} tokens, learned in green)"))
            results.print(_highlighted(tokenizer, chosen[:prompt], chosen_labels[:prompt]))
            for name, ids, labels in (("chosen", chosen, chosen_labels),
                                      ("rejected", rejected, rejected_labels)):  # fmt: skip
                results.print(lead(name, f" ({len(ids) - prompt} tokens):"))
                results.print(_highlighted(tokenizer, ids[prompt:], labels[prompt:]))
            continue
        ids, labels = rows[i]
        judged = "" if tags is None else f", kto_tag {str(bool(tags[i])).lower()}"
        results.print(lead(f"--- example {i} ({len(ids)} tokens{judged}, learned in green)"))
        results.print(_highlighted(tokenizer, ids, labels))


def _highlighted(tokenizer: Any, ids: np.ndarray, labels: np.ndarray) -> Text:
    """Tokens as text, the learned ones in green."""
    text = Text()
    for token, label in zip(ids.tolist(), labels.tolist(), strict=True):
        text.append(
            tokenizer.decode([token]), style="bold green" if label != IGNORE_INDEX else "dim"
        )
    return text


def _as_json(rows: Any, i: int) -> dict[str, Any]:
    """Example ``i`` with LLaMA-Factory's column names: input_ids/labels (+ position_ids when
    packed; kto_tag, kl_input_ids and kl_labels for KTO rows), or chosen_/rejected_input_ids
    and _labels for a pair."""
    if isinstance(rows, PairedSplit):
        (chosen, chosen_labels), (rejected, rejected_labels) = rows[i]
        return {
            "chosen_input_ids": chosen.tolist(),
            "chosen_labels": chosen_labels.tolist(),
            "rejected_input_ids": rejected.tolist(),
            "rejected_labels": rejected_labels.tolist(),
        }
    ids, labels = rows[i]
    row: dict[str, Any] = {"input_ids": ids.tolist(), "labels": labels.tolist()}
    if rows.packed:
        row["position_ids"] = rows.positions(i)[0].tolist()
    tags = rows.column("kto_tag")
    if tags is not None:
        row["kto_tag"] = bool(tags[i])
    if isinstance(rows, FeedbackSplit):
        kl_ids, kl_labels = rows.kl[i]
        row["kl_input_ids"], row["kl_labels"] = kl_ids.tolist(), kl_labels.tolist()
    return row


@data.command()
@click.argument("recipe", type=click.Path(path_type=Path, exists=True))
@click.argument("overrides", nargs=-1)
def stats(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Counts, length histogram, truncations, packing efficiency, learned-token share.

    \b
    Example:
      ftx data stats recipes/quickstart.yaml data.packing=true
    """
    from ftx.core.data.packing import padding_efficiency
    from ftx.core.prepared import load_split, read_manifest

    folder = _resolve(recipe, overrides)
    manifest = read_manifest(folder)
    batch = load_recipe(recipe, overrides).recipe.train.micro_batch_size
    report = manifest["report"]
    table = Table(title=f"ftx data stats ({folder})", show_header=False)
    table.add_row("rows read", str(report["rows"]))
    table.add_row("skipped (bad rows)", str(report["skipped"]))
    table.add_row("truncated", str(report["truncated"]))
    table.add_row("dropped (nothing to learn)", str(report["dropped_no_learnable_tokens"]))
    for name, split in manifest["splits"].items():
        if "tokens" not in split:
            table.add_row(f"{name} examples", str(split["examples"]))
            continue
        share = split["learnable_tokens"] / max(1, split["tokens"])
        if "pairs" in split:
            table.add_row(f"{name} pairs", f"{split['pairs']} (chosen and rejected rows)")
        elif "desirable" in split:
            table.add_row(
                f"{name} examples",
                f"{split['examples']}: {split['desirable']} desirable,"
                f" {split['undesirable']} undesirable",
            )
        else:
            table.add_row(f"{name} examples", f"{split['examples']} in {split['rows']} rows")
        table.add_row(f"{name} tokens", f"{split['tokens']:,} ({share:.1%} learned)")
        if "packing_efficiency" in split:
            table.add_row(f"{name} packing efficiency", f"{split['packing_efficiency']:.2%}")
    train = load_split(folder, "train")
    if train is not None:
        lengths_file = folder / "train" / "example_lengths.npy"
        lengths = np.load(lengths_file) if lengths_file.exists() else train.lengths()
        # the baseline packing beats: batches (in data order) padded to their longest example
        padded = padding_efficiency(lengths.tolist(), batch)
        table.add_row("train padding efficiency", f"{padded:.2%} (batches of {batch}, unpacked)")
    results.print(table)
    if train is not None:
        results.print("train example lengths (tokens):")
        results.print(_histogram(lengths, manifest["max_seq_len"]))


def _histogram(lengths: np.ndarray, max_len: int, bins: int = 8) -> str:
    edges = np.linspace(0, max_len, bins + 1).astype(int)
    counts, _ = np.histogram(lengths, bins=edges)
    peak = max(1, counts.max())
    return "\n".join(
        f"{lo:>6}-{hi:<6} {'#' * int(30 * c / peak):<30} {c}"
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    )


def _exporter_help() -> str:
    return "\n".join(f"{name}: {e.description}" for name, e in exporters().items())


@data.command(
    help=f"""Write the recipe's data in a native tool's own format.

\b
{_exporter_help()}
Example:
  ftx data export recipes/quickstart.yaml --to mindrecord --out /tmp/qs-mindrecord
"""
)
@click.argument("recipe", type=click.Path(path_type=Path, exists=True))
@click.argument("overrides", nargs=-1)
@click.option("--to", "target", type=click.Choice(list(exporters())), required=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def export(recipe: Path, overrides: tuple[str, ...], target: str, out: Path, force: bool) -> None:
    from ftx.core.errors import FtxError
    from ftx.core.fsutil import staged_dir
    from ftx.core.recipe.schema import PREFERENCE_STAGES
    from ftx.core.registry import load

    loaded = load_recipe(recipe, overrides)
    stage = loaded.recipe.method.stage
    if stage in PREFERENCE_STAGES:
        raise FtxError(
            f"the {target} export writes instruction data; method.stage '{stage}' trains on"
            " preference data, which no native export writes yet",
            where=f"{loaded.source}: method.stage",
            fix="inspect the prepared pairs with `ftx data show RECIPE --json` instead",
        )
    claim_destination(out, force=force, inputs=input_paths(loaded.recipe, loaded.source))
    write = load(exporters()[target].function)
    with staged_dir(out, replace=True) as tmp:
        summary = write(loaded.recipe, tmp)
    results.print(f"{out}: {summary}")
