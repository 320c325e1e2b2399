"""Over-long conversations: ftx's rule (drop the oldest rounds, keep the system prompt) and
LLaMA-Factory's (data.truncation: lf_split), so a migrating user can reproduce their
token stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftx.core.data.conversation import Conversation, Message
from ftx.core.data.render import ChatEncoder, infer_seqlen, lf_split
from ftx.core.prepared import IGNORE_INDEX


@pytest.mark.parametrize(
    ("source", "target", "budget", "expected"),
    [
        (10, 20, 100, (10, 20)),  # both fit
        (200, 30, 100, (70, 30)),  # a short answer is kept whole, the prompt is cut
        (30, 200, 100, (30, 70)),  # a short prompt is kept whole, the answer is cut
        (100, 50, 64, (43, 21)),  # both long: the answer gets int(64 * 50 / 150)
        (5, 5, 0, (0, 0)),  # nothing left
    ],
)
def test_infer_seqlen_is_llamafactorys_split(
    source: int, target: int, budget: int, expected: tuple[int, int]
) -> None:
    assert infer_seqlen(source, target, budget) == expected


def test_lf_split_cuts_each_round_in_order_and_reverses_with_mask_history() -> None:
    # Two rounds: prompt 0..9 answer 10..14, prompt 15..29 answer 30..39.
    ids = list(range(40))
    labels = [IGNORE_INDEX] * 10 + ids[10:15] + [IGNORE_INDEX] * 15 + ids[30:40]
    answers = [(10, 15), (30, 40)]
    out_ids, out_labels = lf_split(ids, labels, answers, 20, mask_history=False)
    # round 1 whole (15 tokens); round 2 gets 5: its answer (10) is not under half of 5,
    # its prompt (15) is not either, so 5 * 10 / 25 = 2 answer tokens and 3 prompt tokens.
    assert out_ids == [*range(15), 15, 16, 17, 30, 31]
    assert out_labels == labels[:15] + [IGNORE_INDEX] * 3 + [30, 31]
    reverse_ids, _ = lf_split(ids, labels, answers, 20, mask_history=True)
    # The last round first: 25 tokens for a budget of 20 -> 20 * 10 / 25 = 8 answer tokens.
    assert reverse_ids == list(range(15, 27)) + list(range(30, 38))


def test_both_rules_on_a_real_tokenizer(tiny_qwen2: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_qwen2))
    conv = Conversation(
        (
            Message("user", "first question " * 20),
            Message("assistant", "first answer " * 5),
            Message("user", "second question " * 5),
            Message("assistant", "second answer " * 20),
        ),
        system="You are terse.",
    )
    full = ChatEncoder(tok, "qwen2_5", where="t").encode(
        conv, max_len=10_000, train_on_prompt=False, mask_history=False
    )
    budget = len(full.input_ids) - 40
    ours = ChatEncoder(tok, "qwen2_5", where="t").encode(
        conv, max_len=budget, train_on_prompt=False, mask_history=False
    )
    lf = ChatEncoder(tok, "qwen2_5", where="t").encode(
        conv, max_len=budget, train_on_prompt=False, mask_history=False, truncation="lf_split"
    )
    assert ours.truncated and lf.truncated
    assert len(lf.input_ids) == budget and len(ours.input_ids) <= budget
    # ftx keeps the system prompt and the last round whole; LLaMA-Factory keeps the first
    # round and cuts into the second.
    text = tok.decode(ours.input_ids)
    assert "You are terse." in text and "first question" not in text
    assert tok.decode(ours.input_ids).endswith(tok.decode(full.input_ids)[-200:])
    assert lf.input_ids[: len(lf.input_ids) - 40] == full.input_ids[: budget - 40]
    assert "first question" in tok.decode(lf.input_ids)
