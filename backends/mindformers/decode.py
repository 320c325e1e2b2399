"""The mindformers backend's decoder (``ftx generate``, ``chat``, ``eval``, ``serve``):
MindFormers' legacy LlamaForCausalLM built from the HF folder's config.json, its weights
loaded by MindFormers' own name conversion (an adapter merged into them by the core
first). The network is built with ``is_dynamic`` (its causal mask follows the input's
length) and its forward compiled once per row length, the lengths being powers of two
from 32: each step runs the sequence padded on the right to its bucket (a causal model
never sees later positions), so a few compilations serve a whole session. The loop,
sampling and scoring are the core's (:mod:`ftx.core.inference.decoding`).

    python -m ftx.backends.mindformers.decode '{"path": MODEL, "adapter": null, "context": N}'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mindspore as ms
import numpy as np

from ftx.backends.mindformers.model_section import legacy_model_section
from ftx.backends.mindformers.modeling import build_model, load_hf_weights, on_ascend
from ftx.core.contract import DecoderModel
from ftx.core.inference.decoding import Logits, main_of
from ftx.core.models.architectures import ModelConfig

BUCKET = 32  # the shortest row the forward is compiled for


class MindFormersLogits(Logits):
    def __init__(self, spec: DecoderModel):
        from mindformers import MindFormerConfig

        source = Path(spec.path)
        model = ModelConfig.read(source)
        self.context = min(spec.context, model.max_position_embeddings)
        section = legacy_model_section(
            model, seq_length=self.context, batch_size=1, dtype="float32", flash=on_ascend()
        )
        section["is_dynamic"] = True  # rows of any length (see the module's note)
        if not on_ascend():  # the kernels MindSpore's CPU build has
            section.update(fused_rms_norm=False, use_rope_slice=True)
        ms.set_context(mode=ms.PYNATIVE_MODE, device_target="Ascend" if on_ascend() else "CPU")
        config = MindFormerConfig(
            model={"model_config": section, "arch": {"type": "LlamaForCausalLM"}}
        )
        self.net = build_model(config)
        load_hf_weights(self.net, source, config)
        self.net.set_train(False)
        self.pad = model.pad_token_id if model.pad_token_id is not None else 0
        self.logits = ms.jit(self._logits)

    def _logits(self, ids: ms.Tensor) -> ms.Tensor:
        return self.net(ids)[0]

    def sequence(self, ids: Sequence[int]) -> np.ndarray:
        width = min(max(BUCKET, 1 << (len(ids) - 1).bit_length()), self.context)
        row = np.full((1, width), self.pad, dtype=np.int32)
        row[0, : len(ids)] = ids
        return self.logits(ms.Tensor(row)).asnumpy().reshape(width, -1)[: len(ids)]


if __name__ == "__main__":
    main_of(MindFormersLogits)
