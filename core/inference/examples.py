"""Prompts (and their references) from a dataset in any format ftx reads, or from a
recipe's evaluate section, rendered with the target's chat template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftx.core.contract import ScoredRow
from ftx.core.data.conversation import Conversation
from ftx.core.errors import FtxError
from ftx.core.inference.prompting import Prompter

RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Example:
    """One prompt: its ids, its text as the model sees it, the reference answer (None
    when the row ends with a user turn), the whole conversation's ids and labels for
    the loss (None without a reference), and where it came from (file:line)."""

    prompt_ids: list[int]
    prompt: str
    reference: str | None
    row: ScoredRow | None
    source: str


def read_examples(
    data: Path, prompter: Prompter, *, fmt: str | None, limit: int | None, max_len: int
) -> list[Example]:
    """The examples of ``data``: a dataset file (``fmt``: alpaca, sharegpt, openai, ...;
    default alpaca) or a recipe, whose evaluate datasets (else its training datasets) are
    read; at most ``limit`` (a recipe's evaluate.max_samples when not given)."""
    from ftx.core.data.prepare import RowReport, read_conversations
    from ftx.core.data.sources import resolve
    from ftx.core.recipe.schema import DatasetSpec

    if data.suffix in RECIPE_SUFFIXES:
        from ftx.core.recipe.loader import load_recipe

        recipe = load_recipe(data).recipe
        evaluate = recipe.evaluate
        specs = list(evaluate.datasets if evaluate else recipe.data.datasets)
        base = Path(recipe.data.dataset_dir)
        limit = limit or (evaluate.max_samples if evaluate else None)
        where = f"{data}: evaluate.datasets" if evaluate else f"{data}: data.datasets"
    else:
        if not data.exists():
            raise FtxError("no such file", where=str(data), fix="name a dataset file or a recipe")
        specs, base, where = [DatasetSpec(path=str(data), format=fmt)], Path.cwd(), "--data"
    examples: list[Example] = []
    for i, spec in enumerate(specs):
        source = resolve(spec, base, f"{where}[{i}]")
        for conv in read_conversations(source, "raise", RowReport()):
            examples.append(_example(conv, prompter, max_len))
            if limit and len(examples) >= limit:
                return examples
    if not examples:
        raise FtxError("no rows to answer", where=str(data), fix="name a dataset with rows")
    return examples


def _example(conv: Conversation, prompter: Prompter, max_len: int) -> Example:
    chat = conv.as_chat()
    answered = bool(chat) and chat[-1]["role"] == "assistant"
    encoder = prompter.encoder
    if conv.text is not None or not chat:
        raise FtxError(
            "a plain-text row: there is no prompt to answer",
            where=conv.source,
            fix="use a chat format (alpaca, sharegpt, openai)",
        )
    reference = str(chat[-1]["content"]) if answered else None
    ids = prompter.chat(chat[:-1] if answered else chat, conv.tools)
    row = None
    if answered and encoder is not None:
        encoded = encoder.encode(conv, max_len=max_len, train_on_prompt=False, mask_history=False)
        row = ScoredRow(tuple(encoded.input_ids), tuple(encoded.labels))
    text = prompter.tokenizer.decode(ids, skip_special_tokens=False)
    return Example(ids, text, reference, row, conv.source)
