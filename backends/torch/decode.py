"""The torch backend's decoder (``ftx generate``, ``chat``, ``eval``, ``serve``): the
model through transformers (a PEFT adapter on top through peft), next-token logits with
transformers' key/value cache. The loop, sampling and scoring are the core's
(:mod:`ftx.core.inference.decoding`).

    python -m ftx.backends.torch.decode '{"path": MODEL, "adapter": null, "context": N}'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftx.core.contract import DecoderModel
from ftx.core.inference.decoding import CachedLogits, main_of


class TorchLogits(CachedLogits):
    def __init__(self, spec: DecoderModel):
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype)
        if spec.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, spec.adapter)
        self.model = model.to(self.device).eval()
        config = json.loads((Path(spec.path) / "config.json").read_text())
        self.context = min(spec.context, int(config.get("max_position_embeddings") or 2048))

    def forward(self, ids: Sequence[int], cache: Any) -> tuple[np.ndarray, Any]:
        tensor = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=tensor, past_key_values=cache, use_cache=True)
        return out.logits[0].float().cpu().numpy(), out.past_key_values


if __name__ == "__main__":
    main_of(TorchLogits)
