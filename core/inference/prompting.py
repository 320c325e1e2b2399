"""Prompts as the model was trained on them: the run's chat template (ftx's renderer, the
same one that prepared the training data), the ids that end an answer, and text streamed
out of generated ids."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftx.core.errors import FtxError
from ftx.core.fsutil import regular_file
from ftx.core.inference.source import Target

RAW = "none"  # --template none: the prompt's text as it is, no chat template


class Prompter:
    """The target's tokenizer and chat template."""

    def __init__(self, target: Target):
        from transformers import AutoTokenizer

        from ftx.core.data.render import ChatEncoder

        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"):
            regular_file(target.tokenizer / name, f"tokenizer's {name}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(target.tokenizer))
        except Exception as exc:  # transformers raises many types for a broken tokenizer
            raise FtxError(
                f"the tokenizer cannot be loaded ({type(exc).__name__}: {exc})",
                where=str(target.tokenizer),
                fix="check the tokenizer files beside the model",
            ) from None
        self.template = target.template
        where = "--template" if target.run is None else f"{target.run}/plan/worker.json"
        self.encoder = (
            None
            if self.template == RAW
            else ChatEncoder(self.tokenizer, self.template, where=where)
        )
        self.stop = frozenset(stop_ids(self.tokenizer, target.model, self.template))
        missing = unknown_markers(self.tokenizer, self.template)
        if missing:
            raise FtxError(
                f"the chat template '{self.template}' writes {', '.join(missing)}, which this"
                " tokenizer does not have as a token: the model was not trained with it",
                where=where,
                fix="use the template the model was trained with (--template auto: the"
                " tokenizer's own)",
            )

    def chat(self, messages: Sequence[dict[str, Any]], tools: Sequence[Any] = ()) -> list[int]:
        """Ids of a conversation ending in the generation prompt (``--template none``: the
        messages' contents joined, nothing added)."""
        if self.encoder is None:
            text = "".join(str(m.get("content") or "") for m in messages)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.encoder.generation_prompt(list(messages), tools)

    def fitted(
        self, messages: Sequence[dict[str, Any]], budget: int
    ) -> tuple[list[int], list[dict[str, Any]]]:
        """The conversation's prompt ids within ``budget`` tokens: its oldest rounds
        dropped first, the system prompt kept (as training truncates); the ids and the
        messages kept. A last user message that does not fit alone raises FtxError."""
        head = [m for m in messages[:1] if m["role"] == "system"]
        body = list(messages[len(head) :])
        while True:
            ids = self.chat(head + body)
            starts = [i for i, m in enumerate(body) if m["role"] == "user" and i > 0]
            if len(ids) <= budget:
                return ids, head + body
            if not starts:
                raise FtxError(
                    f"the message is {len(ids)} tokens with the template, and an answer has"
                    f" {budget} left of the model's length",
                    where="chat",
                    fix="send a shorter message, or lower --max-new-tokens",
                )
            body = body[starts[0] :]

    def prompt(self, text: str, system: str | None = None) -> list[int]:
        """Ids of one user message (after ``system``) ready for the answer."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        return self.chat(messages)

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


MARKER = re.compile(r"<\|[^|<>\s]+\|>")  # <|im_start|>, <|eot_id|>, <|user|>, ...


def unknown_markers(tokenizer: Any, template: str) -> list[str]:
    """The <|...|> markers a named template writes that the tokenizer has no single token
    for (a ChatML template on a Llama 3 tokenizer): text the model never saw."""
    import dataclasses

    from ftx.core.data.templates import TEMPLATES

    named = TEMPLATES.get(template)
    if named is None:
        return []
    slots = [v for v in dataclasses.asdict(named).values() if isinstance(v, str)]
    markers = sorted({m for slot in slots for m in MARKER.findall(slot)})
    vocab = tokenizer.get_vocab()
    return [m for m in markers if m not in vocab]


def stop_ids(tokenizer: Any, model: Path, template: str) -> set[int]:
    """The ids that end an answer: the tokenizer's eos, generation_config.json's (else
    config.json's) eos_token_id, as transformers' generate stops, and the special tokens
    that close a turn in a named template (Llama 3's <|eot_id|>, ChatML's <|im_end|>)."""
    stop = {tokenizer.eos_token_id}
    for name in ("generation_config.json", "config.json"):
        path = model / name
        if path.exists():
            configured = json.loads(path.read_text()).get("eos_token_id")
            stop |= set(configured if isinstance(configured, list) else [configured])
            break
    from ftx.core.data.templates import TEMPLATES

    named = TEMPLATES.get(template)
    if named is not None:
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        eos = tokenizer.eos_token or ""
        closing = named.fill(named.assistant, bos="", eos=eos, content="").strip()
        for text in (closing, named.next_turn_stop):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            stop |= {i for i in ids[:1] if i in special}
    stop.discard(None)
    return stop


class TextStream:
    """Text of ids arriving one at a time: each call returns what the new id added,
    holding back an incomplete character (a byte-level token may split one)."""

    def __init__(self, prompter: Prompter):
        self.prompter, self.ids, self.shown = prompter, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.prompter.text(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[len(self.shown) :], text
        return new


def chat_template_text(target: Target) -> str | None:
    """The target's chat template as jinja text, the form llama.cpp and Ollama read: a
    named template's ftx rendering (the one its data was prepared with), or the
    tokenizer's own for ``auto``; None for ``none``."""
    from ftx.core.data.templates import TEMPLATES, to_jinja

    if target.template == RAW:
        return None
    if target.template in TEMPLATES:
        return to_jinja(TEMPLATES[target.template])
    path = target.tokenizer / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    text = settings.get("chat_template")
    jinja = target.tokenizer / "chat_template.jinja"
    if not text and jinja.exists():
        text = jinja.read_text(encoding="utf-8")
    if not isinstance(text, str) or not text:
        raise FtxError(
            "the template is 'auto' and the tokenizer has no chat template",
            where=str(target.tokenizer),
            fix="name a template with --template, or --template none",
        )
    return text
