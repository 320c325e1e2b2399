"""Render conversations with a chat template, tokenise them and mask the labels.

The whole conversation is rendered once and tokenised once, exactly as
``tokenizer.apply_chat_template(..., tokenize=True)`` would, so training sees
the token stream the model will see at inference. Which tokens are learned is
decided from character spans: every assistant turn's span is found by
rendering the conversation up to that turn (with and without the generation
prompt) and taking the difference.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from ftx.core.data.conversation import Conversation
from ftx.core.errors import FtxError
from ftx.core.prepared import IGNORE_INDEX


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


class ChatEncoder:
    """Encodes conversations with one tokenizer and a chat template.

    ``template`` is a registered name (see ftx.core.data.templates) or ``auto``:
    the jinja ``chat_template`` saved with the tokenizer.
    """

    def __init__(self, tokenizer: Any, template: str, *, where: str):
        from ftx.core.data.templates import TEMPLATES

        self.tokenizer = tokenizer
        self.where = where
        self.template = template
        if template == "auto":
            if not getattr(tokenizer, "chat_template", None):
                raise FtxError(
                    "model.template is 'auto' but the tokenizer has no chat_template",
                    where=where,
                    fix=f"name a template: one of {', '.join(TEMPLATES)}",
                )
        elif template not in TEMPLATES:
            raise FtxError(
                f"unknown chat template '{template}'",
                where=where,
                fix=f"use 'auto' or one of: {', '.join(TEMPLATES)}",
            )

    def _render(self, chat: list[dict[str, str]], generation_prompt: bool) -> str:
        if self.template != "auto":
            return self._named(chat, generation_prompt)[0]
        return self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _named(self, chat: list[dict[str, str]], generation_prompt: bool):
        from ftx.core.data.templates import render_named

        tok = self.tokenizer
        try:
            return render_named(
                self.template,
                chat,
                bos=tok.bos_token or "",
                eos=tok.eos_token or "",
                add_generation_prompt=generation_prompt,
            )
        except ValueError as exc:
            raise FtxError(
                str(exc), where=self.where, fix="pick a template for this data"
            ) from None

    def _spans(self, chat: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character span of each assistant turn."""
        if self.template != "auto":
            return self._named(chat, False)
        # A jinja template: an assistant turn starts where the conversation up to it,
        # with the generation prompt, ends; it ends where the rendering with it stops
        # agreeing with the whole conversation (templates may close a finished
        # conversation differently, e.g. with an EOS).
        full = self._render(chat, False)
        spans = []
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            prompt = self._render(chat[:i], True)
            upto = self._render(chat[: i + 1], False)
            if not full.startswith(prompt):
                raise FtxError(
                    "the tokenizer's chat template renders earlier turns differently depending"
                    " on what follows, so assistant turns cannot be located",
                    where=self.where,
                    fix="name a registered template in model.template instead of 'auto'",
                )
            end = len(os.path.commonprefix([upto, full]))  # noqa: RUF071 (strings, by design)
            spans.append((len(prompt), end))
        return full, spans

    def encode(
        self, conv: Conversation, *, max_len: int, train_on_prompt: bool, mask_history: bool
    ) -> Encoded:
        """Token ids and labels (-100 where not learned), dropping oldest rounds to fit."""
        messages = conv.as_chat()
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        body = messages[len(head) :]
        truncated = False
        while True:
            ids, labels = self._encode_chat(head + body, train_on_prompt, mask_history)
            starts = [i for i, m in enumerate(body) if m["role"] == "user" and i > 0]
            if len(ids) <= max_len or not starts:
                break
            body = body[starts[0] :]  # drop the oldest round, keep the system prompt
            truncated = True
        if len(ids) > max_len:
            ids, labels, truncated = ids[:max_len], labels[:max_len], True
        return Encoded(ids, labels, truncated)

    def _encode_chat(
        self, chat: list[dict[str, str]], train_on_prompt: bool, mask_history: bool
    ) -> tuple[list[int], list[int]]:
        text, spans = self._spans(chat)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        return ids, _labels(ids, enc["offset_mapping"], spans, train_on_prompt, mask_history)

    def encode_many(
        self,
        convs: list[Conversation],
        *,
        max_len: int,
        train_on_prompt: bool,
        mask_history: bool,
    ) -> list[Encoded]:
        """``encode`` for many conversations: rendered, then tokenised in one batch by the
        fast tokenizer (in parallel, in Rust); only over-long ones take the slow path."""
        rendered = [self._spans(conv.as_chat()) for conv in convs]
        ids_batch, offsets_batch = self._tokenize_batch([text for text, _ in rendered])
        out = []
        for i, conv in enumerate(convs):
            ids = ids_batch[i]
            if len(ids) > max_len:
                out.append(
                    self.encode(
                        conv,
                        max_len=max_len,
                        train_on_prompt=train_on_prompt,
                        mask_history=mask_history,
                    )
                )
                continue
            labels = _labels(ids, offsets_batch[i], rendered[i][1], train_on_prompt, mask_history)
            out.append(Encoded(ids, labels, False))
        return out

    def _tokenize_batch(self, texts: list[str]) -> tuple[list[list[int]], list[list[tuple]]]:
        """Ids and character offsets of many texts, straight from the Rust tokenizer when
        there is one (the transformers wrapper adds seconds of Python per 20k texts)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            encodings = backend.encode_batch(texts, add_special_tokens=False)
            return [e.ids for e in encodings], [e.offsets for e in encodings]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [list(x) for x in enc["input_ids"]], list(enc["offset_mapping"])

    def encode_prompt(self, conv: Conversation) -> tuple[list[int], str]:
        """Ids of everything before the last assistant turn (plus the generation prompt)
        and that turn's text, for generation-based evaluation."""
        chat = conv.as_chat()
        prompt = self._render(chat[:-1], True)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(ids), chat[-1]["content"]

    def encode_text(self, text: str) -> list[int]:
        """A pre-training document: its tokens plus EOS."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None else [])


def _labels(
    ids: list[int],
    offsets: list[tuple[int, int]],
    spans: list[tuple[int, int]],
    train_on_prompt: bool,
    mask_history: bool,
) -> list[int]:
    """Token ids where a token starts inside a learned span, -100 elsewhere."""
    if train_on_prompt:
        return list(ids)
    if mask_history:
        spans = spans[-1:]
    starts = [a for a, _ in offsets]
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        first, last = bisect_left(starts, a), bisect_left(starts, b)
        labels[first:last] = ids[first:last]
    return labels
