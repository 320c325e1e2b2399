"""Decoding for held-out scoring: greedy generation with transformers' ``generate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: frozenset[int],
    device: torch.device,
    synced: bool = False,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (one left-padded batch), each ending before its
    first stop id. ``synced``: every rank generates together (ZeRO-3)."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    # Left padding, so every prompt ends where generation starts.
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(list(prompt))
        mask[i, width - len(prompt) :] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(stop),
        pad_token_id=pad,
        synced_gpus=synced,
    )
    model.train()
    answers = []
    for row in out[:, width:].tolist():
        ended = [i for i, token in enumerate(row) if token in stop]
        answers.append(row[: ended[0]] if ended else row)
    return answers
