"""Evaluation during a run: held-out loss and greedy-generation exact match."""

from __future__ import annotations

import math
from typing import Any

import torch

from ftx.backends.torch.engines import all_reduce_sum
from ftx.backends.torch.modeling import collate, token_loss_sum
from ftx.core.prepared import PreparedSplit
from ftx.core.workerkit import exact_match_result


@torch.no_grad()
def eval_loss(
    engine: Any, split: PreparedSplit, batch_size: int, pad_id: int, device: torch.device
) -> float:
    """Token-weighted loss over a split, sharded over ranks.

    Uses the bare model (no DDP collectives). Under ZeRO-3 every forward is a
    collective, so every rank runs the same number of batches (short shards
    repeat a row and do not count it).
    """
    rank, model = engine.rank, engine.inner
    model.eval()
    mine = list(range(rank.rank, len(split), rank.world))
    batches = math.ceil(math.ceil(len(split) / rank.world) / batch_size)
    total, count = 0.0, 0
    for b in range(batches):
        indices = mine[b * batch_size : (b + 1) * batch_size]
        if not indices and not engine.gathers_for_forward:
            break
        loss, n = token_loss_sum(model, collate(split, indices or [0], pad_id, device))
        if indices:
            total, count = total + float(loss), count + n
    model.train()
    total, count = all_reduce_sum([total, float(count)], rank)
    return total / max(count, 1)


@torch.no_grad()
def exact_match(
    model: Any,
    tokenizer: Any,
    prompts: list[dict[str, Any]],
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 32,
    synced: bool = False,
) -> dict[str, Any]:
    """Greedy generation on held-out prompts; share of answers equal to the reference."""
    model.eval()
    stop = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    stop |= set(configured if isinstance(configured, list) else [configured])
    stop.discard(None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in rows)
        # Left padding, so every prompt ends where generation starts.
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r["input_ids"]) :] = torch.tensor(r["input_ids"])
            mask[i, width - len(r["input_ids"]) :] = 1
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(stop),
            pad_token_id=pad,
            synced_gpus=synced,
        )
        answers += [
            tokenizer.decode(out[i, width:], skip_special_tokens=True) for i in range(len(rows))
        ]
    model.train()
    return exact_match_result([r["reference"] for r in prompts], answers)
