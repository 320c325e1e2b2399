"""The paddle backend's decoder (``ftx generate``, ``chat``, ``eval``, ``serve``):
PaddleFormers' causal LM read from the HF folder (an adapter merged into it by the core
first), next-token logits with PaddleFormers' key/value cache. The loop, sampling and
scoring are the core's (:mod:`ftx.core.inference.decoding`).

    python -m ftx.backends.paddle.decode '{"path": MODEL, "adapter": null, "context": N}'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from ftx.backends.paddle.modeling import from_hf
from ftx.core.contract import DecoderModel
from ftx.core.inference.decoding import CachedLogits, main_of


class PaddleLogits(CachedLogits):
    def __init__(self, spec: DecoderModel):
        source = Path(spec.path)
        self.model = from_hf(source, Path.cwd(), 0, "float32", packed=False)
        self.model.eval()
        config = json.loads((source / "config.json").read_text())
        self.context = min(spec.context, int(config.get("max_position_embeddings") or 2048))

    def forward(self, ids: Sequence[int], cache: Any) -> tuple[np.ndarray, Any]:
        with paddle.no_grad():
            out = self.model(
                paddle.to_tensor([list(ids)], dtype="int64"),
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
        return out.logits[0].astype("float32").numpy(), out.past_key_values


if __name__ == "__main__":
    main_of(PaddleLogits)
