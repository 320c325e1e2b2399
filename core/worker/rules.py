"""The rules every backend follows, so that the frameworks train alike.

- :func:`decays`: AdamW's decoupled weight decay skips biases and norm weights (as
  transformers' Trainer does)
- :func:`clip_coefficient`: torch's ``clip_grad_norm_`` rule for scaling gradients
- :func:`lora_a_init`: the LoRA A every backend starts from, by Hugging Face module name
- :func:`segment_spans`: where each example of a packed row starts and ends
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

CLIP_EPSILON = 1e-6  # torch's clip_grad_norm_ adds it to the norm


def decays(name: str, shape: Sequence[int]) -> bool:
    """Whether AdamW decays the parameter ``name`` of this shape: matrices do; biases,
    norm weights and other vectors do not."""
    return len(shape) >= 2 and "norm" not in name


def clip_coefficient(norm: Any, max_norm: float) -> Any:
    """What gradients are multiplied by when ``max_norm / (norm + 1e-6)`` is below 1
    (torch's ``clip_grad_norm_``). ``norm`` may be a float or a framework tensor (MindSpore
    traces this function into its compiled update); the caller clamps at 1."""
    return max_norm / (norm + CLIP_EPSILON)


LAYER_MODULE = re.compile(r"layers\.(\d+)\.(.+)$")


def lora_a_init(module: str, rank: int, fan_in: int, seed: int) -> np.ndarray:
    """LoRA's A [rank, fan_in] for the Hugging Face module ``module``
    (``model.layers.0.self_attn.q_proj``): PEFT's distribution (kaiming-uniform with
    a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) drawn from a generator seeded by
    the run's seed and the module's name, so every backend starts from the same adapter
    (B starts at zero everywhere). Each framework's own draw would differ."""
    rng = np.random.default_rng([seed, zlib.crc32(module.encode())])
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(rank, fan_in)).astype(np.float32)


def hf_module(name: str) -> str | None:
    """``model.layers.N.<rest>`` for a parameter or module name holding ``layers.N.<rest>``
    (any wrapper prefix dropped), else None."""
    found = LAYER_MODULE.search(name)
    return f"model.layers.{found.group(1)}.{found.group(2)}" if found else None


def segment_spans(segments: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of every example of one packed row, from its segment ids (0: padding)."""
    spans, start = [], 0
    for i in range(1, len(segments) + 1):
        if i == len(segments) or segments[i] != segments[start]:
            if segments[start] > 0:
                spans.append((start, i))
            start = i
    return spans
