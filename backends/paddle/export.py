"""The recipe's data in Paddle's own formats (text, not tokens: PaddleFormers and
PaddleNLP tokenise their data themselves). Runs in the core's process (no paddle import).

- `ftx data export --to paddlenlp`: PaddleNLP's ``train.json`` and ``dev.json`` (JSON
  Lines despite the name) with ``{"src": [user turns], "tgt": [assistant turns],
  "context": {"system": ...}}`` and the template as PaddleNLP's ``chat_template.json``.
- :func:`export_plan_data` (OUT/plan/data of every paddle plan, and `ftx data export
  --to paddleformers`): PaddleFormers' ``messages`` and ``erniekit`` JSON Lines, the
  PaddleNLP folder, and ``ftx_template.py``, which registers the recipe's template in
  PaddleFormers under ``ftx_<name>`` (the plan's ``custom_register_path``).
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
    note = (
        "; no chat_template.json: model.template is auto (the tokenizer's jinja template),"
        " which PaddleNLP's chat_template.json cannot hold; name a template"
        " (model.template=llama3, ...) to have one written"
        if recipe.model.template == "auto"
        else ", chat_template.json"
    )
    return f"PaddleNLP data, {counts['train']} train / {counts['dev']} dev rows{note}"


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


def export_plan_data(recipe: Recipe, out: Path) -> str:
    """The data a paddle plan's native configs read, into ``out`` (OUT/plan/data)."""
    from ftx.backends.paddle.plan_files import ERNIEKIT, MESSAGES, PADDLENLP, PLAN_DATA
    from ftx.core.data.prepare import RowReport, split_conversations

    train, val = split_conversations(recipe, RowReport())
    eval_rows = val or train[:1]  # PaddleFormers requires an eval file even without do_eval
    stage = recipe.method.stage
    if stage not in ("sft", "pt", "dpo"):  # no PaddleFormers stage reads these rows
        out.mkdir(parents=True, exist_ok=True)
        (out / "README.txt").write_text(
            f"method.stage {stage}: PaddleFormers has no stage that reads this data;"
            " ftx's paddle worker trains it from OUT/data (see plan/NOTES.md).\n"
        )
        return f"no Paddle plan data for stage {stage}"
    # src/tgt formats hold plain user/assistant rounds (or a pre-training text) only.
    plain = stage != "dpo" and all(
        c.text is not None or (not c.tools and _alternating(c)) for c in train + val
    )
    row_of = pair_messages_row if stage == "dpo" else messages_row
    formats = {MESSAGES: row_of, **({ERNIEKIT: erniekit_row} if plain else {})}
    for folder, row in formats.items():
        here = out / Path(folder).relative_to(PLAN_DATA)
        here.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train.jsonl", train), ("eval.jsonl", eval_rows)):
            _jsonl(here / name, [row(c) for c in rows])
    written = [Path(folder).name for folder in formats]
    named = recipe.model.template != "auto"
    if recipe.method.stage == "sft" and plain:
        bos, eos = _special_tokens(recipe) if named else ("", "")
        write_paddlenlp(train, val, recipe.model.template, out / Path(PADDLENLP).name, bos, eos)
        written.append("paddlenlp")
    if named:
        (out / "ftx_template.py").write_text(
            paddleformers_template_module(recipe.model.template, *_special_tokens(recipe))
        )
    return f"Paddle plan data ({', '.join(written)}): {len(train)} train / {len(val)} eval rows"


def messages_row(conv: Conversation) -> dict[str, Any]:
    """One conversation in PaddleFormers' ``messages`` format (pre-training: the text as
    one assistant turn, as PaddleFormers converts its own ``text`` rows)."""
    if conv.text is not None:
        return {"messages": [{"role": "assistant", "content": conv.text}]}
    messages: list[dict[str, Any]] = []
    if conv.system:
        messages.append({"role": "system", "content": conv.system})
    for m in conv.messages:
        turn: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        messages.append(turn)
    row: dict[str, Any] = {"messages": messages}
    if conv.tools:
        row["tools"] = json.dumps(list(conv.tools), ensure_ascii=False)
    return row


def pair_messages_row(conv: Conversation) -> dict[str, Any]:
    """A preference pair in PaddleFormers' DPO ``messages`` form: the conversation as
    ``messages``, each answer as a one-turn ``chosen_response`` / ``rejected_response``."""
    assert conv.chosen is not None and conv.rejected is not None
    row = messages_row(conv)
    for key, answer in (("chosen_response", conv.chosen), ("rejected_response", conv.rejected)):
        row[key] = [{"role": "assistant", "content": answer.content}]
    return row


def erniekit_row(conv: Conversation) -> dict[str, Any]:
    """One conversation in PaddleFormers' ``erniekit`` format: ``text`` for pre-training,
    else ``src``/``tgt`` rounds (and ``system``); tool turns have no place there."""
    if conv.text is not None:
        return {"text": conv.text}
    row = src_tgt_row(conv)
    context = row.pop("context", None)
    if context:
        row["system"] = context["system"]
    return row


def _alternating(conv: Conversation) -> bool:
    roles = [m.role for m in conv.messages]
    return roles == ["user", "assistant"] * (len(roles) // 2) and bool(roles)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def _special_tokens(recipe: Recipe) -> tuple[str, str]:
    from ftx.core.data.prepare import load_tokenizer

    tokenizer = load_tokenizer(recipe)
    return tokenizer.bos_token or "", tokenizer.eos_token or ""


def paddleformers_template_module(template: str, bos: str, eos: str) -> str:
    """Python that registers ftx's template ``template`` in PaddleFormers as ``ftx_<name>``.

    The user turn carries the assistant header (never learned); the assistant turn is
    the answer, and its end-of-turn text is PaddleFormers' ``chat_sep`` and ``suffix``,
    which PaddleFormers learns after every answer, as ftx does.
    """
    from ftx.backends.paddle.plan_files import template_name
    from ftx.core.data.templates import TEMPLATES

    slots = TEMPLATES[template]
    if slots.system_mode != "block":
        raise FtxError(
            f"the {template} template folds the system prompt into a user turn, which"
            " PaddleFormers' templates cannot express",
            where="model.template",
            fix="use template: auto (PaddleFormers renders the tokenizer's chat template)",
        )

    def fill(slot: str, content: str = "{{content}}") -> str:
        return slots.fill(slot, bos, eos, content=content)

    answer, marker, end = fill(slots.assistant).partition("{{content}}")
    if not marker or answer:
        raise FtxError(
            f"the {template} template writes text before the answer inside the learned part",
            where="model.template",
            fix="use template: auto",
        )
    system = fill(slots.system) if slots.system else "{{content}}"
    default = slots.default_system or ""
    return (
        "# Written by `ftx plan`: ftx's template as a PaddleFormers template\n"
        "# (`custom_register_path` in paddleformers.yaml loads it).\n"
        "from paddleformers.datasets.template.formatter import EmptyFormatter, StringFormatter\n"
        "from paddleformers.datasets.template.template import register_template\n\n"
        "register_template(\n"
        f"    name={template_name(template)!r},\n"
        f"    format_prefix=EmptyFormatter(slots=[{fill(slots.prefix)!r}]),\n"
        f"    format_system=StringFormatter(slots=[{system!r}]),\n"
        f"    format_user=StringFormatter(slots=[{fill(slots.user) + fill(slots.generation)!r}]),\n"
        '    format_assistant=StringFormatter(slots=["{{content}}"]),\n'
        f"    default_system={default!r},\n"
        f"    chat_sep={end!r},\n"
        f"    suffix=[{(end or eos)!r}],\n"
        ")\n"
    )
