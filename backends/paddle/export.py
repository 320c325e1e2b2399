"""PaddleNLP's fine-tuning data: src/tgt JSON Lines plus chat_template.json.

PaddleNLP tokenises its own data, so this export carries text, not tokens:
``train.json`` and ``dev.json`` (JSON Lines despite the name) with
``{"src": [user turns], "tgt": [assistant turns], "context": {"system": ...}}``
and the chat template in PaddleNLP's ``chat_template.json`` form. Runs in the
core's process (no paddle import), for `ftx data export --to paddlenlp`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftx.core.data.conversation import Conversation
from ftx.core.errors import FtxError
from ftx.core.recipe.schema import Recipe


def export_paddlenlp(recipe: Recipe, out: Path) -> str:
    """The recipe's conversations as PaddleNLP data in ``out`` (an empty, staged folder)."""
    from ftx.core.data.prepare import RowReport, load_tokenizer, split_conversations

    train, val = split_conversations(recipe, RowReport())
    bos = eos = None
    if (Path(recipe.model.path) / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(recipe)
        bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    counts = write_paddlenlp(train, val, recipe.model.template, out, bos, eos)
    return f"PaddleNLP data, {counts['train']} train / {counts['dev']} dev rows"


def src_tgt_row(conv: Conversation) -> dict[str, Any]:
    """One conversation as a PaddleNLP src/tgt record."""
    users = [m.content for m in conv.messages if m.role == "user"]
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    if any(m.role == "tool" for m in conv.messages) or len(users) != len(answers):
        raise FtxError(
            "PaddleNLP src/tgt data holds alternating user/assistant rounds only",
            where=conv.source,
            fix="drop tool turns from this dataset before exporting to PaddleNLP",
        )
    row: dict[str, Any] = {"src": users, "tgt": answers}
    if conv.system:
        row["context"] = {"system": conv.system}
    return row


def write_paddlenlp(
    train: list[Conversation],
    val: list[Conversation],
    template: str,
    out: Path,
    bos: str | None = None,
    eos: str | None = None,
) -> dict[str, int]:
    """Write train.json, dev.json and chat_template.json into ``out`` (a new folder).

    ``bos``/``eos`` are the tokenizer's tokens, written literally where the template
    places them. A template that folds the system prompt into the first user turn
    (llama2, mistral, gemma) exports an empty ``system``: PaddleNLP has no slot there.
    """
    from ftx.core.data.templates import TEMPLATES, to_paddlenlp

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.json", train), ("dev.json", val)):
        text = "".join(json.dumps(src_tgt_row(c), ensure_ascii=False) + "\n" for c in rows)
        (out / name).write_text(text, encoding="utf-8")
    if template in TEMPLATES:
        slots = TEMPLATES[template]
        needs = [t for t, v in (("{bos}", bos), ("{eos}", eos)) if v is None]
        used = "".join(str(v) for v in slots.__dict__.values())
        missing = [t for t in needs if t in used]
        if missing:
            raise FtxError(
                f"the {template} template writes {' and '.join(missing)}, and the model folder"
                " has no tokenizer to name them",
                where="model.path",
                fix="point model.path at a folder with the tokenizer files",
            )
        try:
            chat = to_paddlenlp(slots, bos or "", eos or "")
        except ValueError as exc:
            fix = "export with another template"
            raise FtxError(str(exc), where="model.template", fix=fix) from None
        (out / "chat_template.json").write_text(json.dumps(chat, indent=2, ensure_ascii=False))
    return {"train": len(train), "dev": len(val)}
