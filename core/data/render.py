"""Render conversations with a chat template, tokenise them and mask the labels.

The whole conversation is rendered once and tokenised once, exactly as
``tokenizer.apply_chat_template(..., tokenize=True)`` would, so training sees
the token stream the model will see at inference. Which tokens are learned is
decided from character spans: every assistant turn's span is found by
rendering the conversation up to that turn (with and without the generation
prompt) and taking the difference.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftx.core.data.conversation import Conversation, Message
from ftx.core.errors import FtxError
from ftx.core.prepared import IGNORE_INDEX

Chat = list[dict[str, Any]]
Tools = Sequence[Any]
Span = tuple[int, int]


@dataclass(frozen=True)
class Choices:
    """A prompt's ids and, per answer, its (ids, labels), cut to fit one row each."""

    prompt: list[int]
    answers: list[tuple[list[int], list[int]]]
    truncated: bool

    def rows(self) -> list[tuple[list[int], list[int]]]:
        """Each answer's row: the prompt (never learned) then the answer."""
        masked = [IGNORE_INDEX] * len(self.prompt)
        return [(self.prompt + ids, masked + labels) for ids, labels in self.answers]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


RENDER_SECONDS = 10  # the most one conversation's jinja rendering may take


class RenderTimeout(Exception):
    """A chat template that ran past :data:`RENDER_SECONDS` on one conversation."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise :class:`RenderTimeout` in the block after ``seconds`` (a real-time timer; in
    the main thread only, where Python delivers signals; elsewhere unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise RenderTimeout

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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

    def _render(self, chat: Chat, generation_prompt: bool, tools: Tools = ()) -> str:
        if self.template != "auto":
            return self._named(chat, generation_prompt, tools)[0]
        try:
            with time_bound(RENDER_SECONDS):
                return self.tokenizer.apply_chat_template(
                    chat,
                    tools=list(tools) or None,
                    tokenize=False,
                    add_generation_prompt=generation_prompt,
                )
        except RenderTimeout:
            raise FtxError(
                f"the tokenizer's chat template did not finish rendering one conversation in"
                f" {RENDER_SECONDS} s (a template should take milliseconds: loops that run away)",
                where=self.where,
                fix="fix the chat template, or name a registered template in model.template",
            ) from None
        except Exception as exc:  # jinja raises its own errors (raise_exception, undefined)
            raise FtxError(
                f"the tokenizer's chat template cannot render this conversation ({exc})",
                where=self.where,
                fix="fix the data, or name a registered template in model.template",
            ) from None

    def _named(self, chat: Chat, generation_prompt: bool, tools: Tools = ()):
        from ftx.core.data.templates import render_named

        tok = self.tokenizer
        try:
            return render_named(
                self.template,
                chat,
                tools=tools,
                bos=tok.bos_token or "",
                eos=tok.eos_token or "",
                add_generation_prompt=generation_prompt,
            )
        except ValueError as exc:
            raise FtxError(
                str(exc), where=self.where, fix="pick a template for this data"
            ) from None

    def _spans(self, chat: Chat, tools: Tools = ()) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character span of each assistant turn."""
        if self.template != "auto":
            return self._named(chat, False, tools)
        # A jinja template: an assistant turn starts where the conversation up to it,
        # with the generation prompt, ends; it ends where the rendering with it stops
        # agreeing with the whole conversation (templates may close a finished
        # conversation differently, e.g. with an EOS).
        full = self._render(chat, False, tools)
        spans = []
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            prompt = self._render(chat[:i], True, tools)
            upto = self._render(chat[: i + 1], False, tools)
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
        self,
        conv: Conversation,
        *,
        max_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        truncation: str = "oldest_rounds",
    ) -> Encoded:
        """Token ids and labels (-100 where not learned), cut to ``max_len`` by the
        ``truncation`` rule: "oldest_rounds" drops whole rounds from the start (keeping the
        system prompt); "lf_split" is LLaMA-Factory's: rounds in order (the last first with
        mask_history), each cut to share what is left between prompt and answer."""
        messages, tools = conv.as_chat(), conv.tools
        if truncation == "lf_split":
            text, spans = self._spans(messages, tools)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            labels = _labels(ids, enc["offset_mapping"], spans, train_on_prompt, mask_history)
            if len(ids) <= max_len:
                return Encoded(ids, labels, False)
            pieces = _token_spans(enc["offset_mapping"], spans)
            cut_ids, cut_labels = lf_split(ids, labels, pieces, max_len, mask_history)
            return Encoded(cut_ids, cut_labels, True)
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        body = messages[len(head) :]
        truncated = False
        while True:
            ids, labels = self._encode_chat(head + body, tools, train_on_prompt, mask_history)
            starts = [i for i, m in enumerate(body) if m["role"] == "user" and i > 0]
            if len(ids) <= max_len or not starts:
                break
            body = body[starts[0] :]  # drop the oldest round, keep the system prompt
            truncated = True
        if len(ids) > max_len:
            ids, labels, truncated = ids[:max_len], labels[:max_len], True
        return Encoded(ids, labels, truncated)

    def _encode_chat(
        self, chat: Chat, tools: Tools, train_on_prompt: bool, mask_history: bool
    ) -> tuple[list[int], list[int]]:
        text, spans = self._spans(chat, tools)
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
        truncation: str = "oldest_rounds",
    ) -> list[Encoded]:
        """``encode`` for many conversations: rendered, then tokenised in one batch by the
        fast tokenizer (in parallel, in Rust); only over-long ones take the slow path."""
        rendered = [self._spans(conv.as_chat(), conv.tools) for conv in convs]
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
                        truncation=truncation,
                    )
                )
                continue
            labels = _labels(ids, offsets_batch[i], rendered[i][1], train_on_prompt, mask_history)
            out.append(Encoded(ids, labels, False))
        return out

    def encode_arrays(
        self,
        convs: list[Conversation],
        *,
        max_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        truncation: str = "oldest_rounds",
    ) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """``encode_many`` as int32 arrays (ids, labels, truncated), for data preparation:
        the learned spans are found with the Rust tokenizer's char-to-token map (a few calls
        per turn) instead of every token's offsets in Python."""
        options = {
            "max_len": max_len,
            "train_on_prompt": train_on_prompt,
            "mask_history": mask_history,
            "truncation": truncation,
        }
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return [
                (np.asarray(e.input_ids, np.int32), np.asarray(e.labels, np.int32), e.truncated)
                for e in self.encode_many(convs, **options)
            ]
        rendered = [self._spans(conv.as_chat(), conv.tools) for conv in convs]
        encodings = backend.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        out = []
        for conv, (_, spans), encoding in zip(convs, rendered, encodings, strict=True):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            if len(ids) > max_len:
                e = self.encode(conv, **options)
                out.append(
                    (np.asarray(e.input_ids, np.int32), np.asarray(e.labels, np.int32), True)
                )
                continue
            if train_on_prompt:
                out.append((ids, ids.copy(), False))
                continue
            labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
            for a, b in spans[-1:] if mask_history else spans:
                first, last = _first_token_at(encoding, a), _first_token_at(encoding, b)
                labels[first:last] = ids[first:last]
            out.append((ids, labels, False))
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

    def encode_answers(
        self, conv: Conversation, answers: Sequence[Message], *, max_len: int, truncation: str
    ) -> Choices:
        """The prompt (the conversation, ending with the assistant header) and each answer
        to it, tokenised apart so that every answer follows the very same prompt ids, as
        LLaMA-Factory's pairwise and feedback processors do; each answer is learned with the
        end of its turn, the prompt never.

        Over ``max_len`` (the prompt plus the longest answer): ``lf_split`` cuts as
        LLaMA-Factory cuts pairs (``infer_seqlen`` over the prompt and the longest answer;
        everything keeps its start); ``oldest_rounds`` drops whole rounds from the prompt's
        start first (keeping the system prompt), and then shares what is left by the same
        split, the prompt keeping its end (the question and the assistant header)."""
        chat, tools = conv.as_chat(), conv.tools
        head = chat[:1] if chat and chat[0]["role"] == "system" else []
        body = chat[len(head) :]
        truncated = False
        while True:
            prompt, pieces = self._answer_pieces(head + body, answers, tools, conv.source)
            longest = max(len(ids) for ids, _ in pieces)
            starts = [i for i, m in enumerate(body) if m["role"] == "user" and i > 0]
            if len(prompt) + longest <= max_len:
                return Choices(prompt, pieces, truncated)
            if truncation == "lf_split" or not starts:
                break
            body, truncated = body[starts[0] :], True
        keep_prompt, keep_answer = infer_seqlen(len(prompt), longest, max_len)
        if truncation == "lf_split":
            prompt = prompt[:keep_prompt]
        else:
            prompt = prompt[len(prompt) - keep_prompt :] if keep_prompt else []
        pieces = [(ids[:keep_answer], labels[:keep_answer]) for ids, labels in pieces]
        return Choices(prompt, pieces, True)

    def _answer_pieces(
        self, chat: Chat, answers: Sequence[Message], tools: Tools, source: str
    ) -> tuple[list[int], list[tuple[list[int], list[int]]]]:
        prompt_text, pieces = None, []
        for answer in answers:
            text, spans = self._spans([*chat, {"role": "assistant", "content": answer.content}],
                                      tools)  # fmt: skip
            start, end = spans[-1]
            if prompt_text is None:
                prompt_text = text[:start]
            elif text[:start] != prompt_text:
                raise FtxError(
                    "the chat template renders the prompt differently for the two answers",
                    where=source,
                    fix="name a registered template in model.template",
                )
            enc = self.tokenizer(
                text[start:], add_special_tokens=False, return_offsets_mapping=True
            )
            ids = list(enc["input_ids"])
            labels = [
                token if offset[0] < end - start else IGNORE_INDEX
                for token, offset in zip(ids, enc["offset_mapping"], strict=True)
            ]
            pieces.append((ids, labels))
        assert prompt_text is not None
        prompt = list(self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        return prompt, pieces

    def encode_prompt(self, conv: Conversation) -> tuple[list[int], str]:
        """Ids of everything before the last assistant turn (plus the generation prompt)
        and that turn's text, for generation-based evaluation."""
        chat = conv.as_chat()
        return self.generation_prompt(chat[:-1], conv.tools), chat[-1]["content"]

    def generation_prompt(self, chat: list[dict[str, Any]], tools: Tools = ()) -> list[int]:
        """Ids of a conversation (role/content messages) followed by the assistant's
        generation prompt: what a model continues with its answer."""
        prompt = self._render(chat, True, tools)
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """A pre-training document: its tokens plus EOS."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None else [])


def _first_token_at(encoding: Any, position: int) -> int:
    """The index of the first token that starts at or after character ``position`` (the
    rule of ``_labels``: a token belongs where it starts)."""
    count = len(encoding.ids)
    token = encoding.char_to_token(position)
    if token is None:  # the end of the text (or a character no token covers)
        if count == 0 or encoding.token_to_chars(count - 1)[0] < position:
            return count  # every token starts before it: the common case, the text's end
        starts = [start for start, _ in encoding.offsets]
        return bisect_left(starts, position)
    while token > 0 and encoding.token_to_chars(token - 1)[0] >= position:
        token -= 1  # pieces of one character share its offsets
    if encoding.token_to_chars(token)[0] < position:
        token += 1
    return min(token, count)


def _token_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[Span]:
    """Character spans as token index spans (a token belongs where it starts)."""
    starts = [a for a, _ in offsets]
    return [(bisect_left(starts, a), bisect_left(starts, b)) for a, b in spans]


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
    labels = [IGNORE_INDEX] * len(ids)
    for first, last in _token_spans(offsets, spans):
        labels[first:last] = ids[first:last]
    return labels


def infer_seqlen(source_len: int, target_len: int, budget: int) -> tuple[int, int]:
    """LLaMA-Factory's split of ``budget`` tokens between a round's prompt and answer: the
    answer whole when it takes under half, the prompt whole when it does, else in
    proportion; the prompt gets what the answer leaves."""
    if target_len * 2 < budget:
        max_target = budget
    elif source_len * 2 < budget:
        max_target = budget - source_len
    else:
        max_target = int(budget * (target_len / (source_len + target_len)))
    new_target = min(max_target, target_len)
    return min(max(budget - new_target, 0), source_len), new_target


def lf_split(
    ids: list[int], labels: list[int], answers: list[Span], max_len: int, mask_history: bool
) -> tuple[list[int], list[int]]:
    """Cut a conversation the way LLaMA-Factory does: (prompt, answer) rounds in order (the
    last first with mask_history), each cut by ``infer_seqlen`` to what is left."""
    rounds, start = [], 0
    for i, (first, last) in enumerate(answers):
        end = len(ids) if i == len(answers) - 1 else last  # what follows the last answer
        rounds.append(((start, first), (first, end)))
        start = end
    if not rounds:
        return ids[:max_len], labels[:max_len]
    if mask_history:
        rounds = rounds[::-1]
    out_ids: list[int] = []
    out_labels: list[int] = []
    total = 0
    for (s0, s1), (t0, t1) in rounds:
        if total >= max_len:
            break
        keep_s, keep_t = infer_seqlen(s1 - s0, t1 - t0, max_len - total)
        piece = (slice(s0, s0 + keep_s), slice(t0, t0 + keep_t))
        round_ids = ids[piece[0]] + ids[piece[1]]
        round_labels = labels[piece[0]] + labels[piece[1]]
        total += keep_s + keep_t
        if mask_history:
            out_ids, out_labels = round_ids + out_ids, round_labels + out_labels
        else:
            out_ids, out_labels = out_ids + round_ids, out_labels + round_labels
    return out_ids, out_labels
