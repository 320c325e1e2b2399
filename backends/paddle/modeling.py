"""PaddleFormers model loading (HF safetensors read directly), LoRA, batches, the NLL and
per-token log-probabilities.

Runs inside the paddle environment. The model is PaddleFormers' own
(``AutoModelForCausalLM``), read from the Hugging Face folder with
``convert_from_hf`` (no conversion step, no copy of the weights); LoRA is
``paddleformers.peft``. Packed rows keep each example to itself with
PaddleFormers' ``attn_mask_startend_row_indices`` (FlashMask's row indices).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from ftx.backends.paddle.plan_files import LORA_CONFIG
from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.errors import FtxError
from ftx.core.prepared import IGNORE_INDEX
from ftx.core.worker.objectives import TokenBatch
from ftx.core.worker.rules import segment_spans


def on_gpu() -> bool:
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def model_view(source: Path, root: Path, rank: int) -> Path:
    """A folder of links to the model's files, private to this rank, under ``root``.

    PaddleFormers writes a ``flex-ckpt`` metadata file into the folder it loads from;
    the links keep the user's model folder (maybe read-only or shared) untouched and
    cost no copy of the weights.
    """
    view = root / ".paddle-model" / f"rank-{rank}"
    view.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = view / item.name
        if item.is_file() and not link.exists():
            os.symlink(item.resolve(), link)
    return view


def from_hf(
    source: Path, root: Path, rank: int, dtype: str, packed: bool, recompute: bool = False
) -> Any:
    """PaddleFormers' causal LM read from the HF folder ``source`` (through a view of
    links under ``root``), with the checkpoint's pad row."""
    from paddleformers.transformers import AutoConfig, AutoModelForCausalLM

    model_config = json.loads((source / "config.json").read_text())
    architecture = (model_config.get("architectures") or ["?"])[0]
    if not on_gpu() and model_config.get("model_type") != "llama":
        raise FtxError(
            f"PaddleFormers 1.2 builds {architecture} only with PaddleFleet, which needs the"
            " GPU image; on CPU the paddle backend trains Llama-architecture models",
            where=f"{source}/config.json",
            fix="use --backend torch on this machine, or the paddle cuda image",
        )
    view = model_view(source, root, rank)
    settings = AutoConfig.from_pretrained(str(view), dtype=dtype)
    if not on_gpu():
        settings.fuse_rms_norm = False  # the fused kernel is GPU-only
    # FlashMask for packed rows on GPUs; on CPU eager attention, which also reads the
    # row indices (PaddleFormers' sdpa path does not keep packed examples apart there).
    settings._attn_implementation = ("flashmask" if packed else "sdpa") if on_gpu() else "eager"
    if recompute:
        settings.recompute_granularity = "full"
        settings.recompute_method = "uniform"
        settings.recompute_num_layers = 1
    # PaddleFormers' default loader (flex_checkpoint) reshards across ranks through
    # CUDA; on CPU its plain safetensors loader reads the same file (same logits).
    fmt = {} if on_gpu() else {"load_checkpoint_format": "safetensors"}
    model = AutoModelForCausalLM.from_pretrained(
        str(view), config=settings, convert_from_hf=True, dtype=dtype, **fmt
    )
    keep_pad_embedding(model)
    return model


def load_model(config: WorkerConfig, layout: RunLayout, rank: int, packed: bool) -> Any:
    """PaddleFormers' model from the HF folder, with LoRA applied when the plan asks."""
    source = Path(config.model.path)
    recompute = config.train.gradient_checkpointing
    model = from_hf(source, layout.root, rank, config.model.dtype, packed, recompute)
    if config.method.finetuning == "lora":
        from paddleformers.peft import LoRAConfig, LoRAModel

        settings = json.loads((layout.plan / LORA_CONFIG).read_text())
        model = LoRAModel(model, LoRAConfig(**settings, merge_weights=False))
        start_lora_like_every_backend(model, config.train.seed)
        if config.train.gradient_checkpointing:
            # PaddleFormers recomputes a layer only when its input needs a gradient; with
            # the embeddings frozen it would silently not (transformers'
            # enable_input_require_grads, the same fix).
            model.get_input_embeddings().register_forward_post_hook(_needs_grad)
    return model


def start_lora_like_every_backend(model: Any, seed: int) -> None:
    """Every LoRA A from ftx's seeded draw (ftx.core.worker.rules.lora_a_init), the one the
    torch and mindformers workers use too (Paddle keeps A as [in, rank]); B stays zero."""
    from ftx.core.worker.rules import hf_module, lora_a_init

    for name, param in model.named_parameters():
        if not name.endswith(".lora_A"):
            continue
        fan_in, rank = param.shape
        value = lora_a_init(str(hf_module(name.removesuffix(".lora_A"))), rank, fan_in, seed)
        param.set_value(paddle.to_tensor(value.T.copy(), dtype=param.dtype))


def _needs_grad(layer: Any, inputs: Any, output: paddle.Tensor) -> paddle.Tensor:
    output.stop_gradient = False
    return output


def keep_pad_embedding(model: Any) -> None:
    """Read the pad token's embedding row like every other row, as transformers does.

    Paddle's Embedding returns zeros for ``padding_idx`` (PaddleFormers passes the
    config's pad_token_id, except under tensor parallelism), so wherever the pad token
    is also a real token (pad = eos, Qwen's <|endoftext|>) Paddle's model would compute
    something else than the checkpoint's.
    """
    model.get_input_embeddings()._padding_idx = None


def trainable(model: Any) -> list[Any]:
    return [p for p in model.parameters() if not p.stop_gradient]


def global_norm(grads: list[Any]) -> float:
    """The global L2 norm of gradients, in one reduction and one host sync (a float() per
    tensor cost ~12% of a small model's step)."""
    squares = [
        paddle.square(g if g.dtype == paddle.float32 else g.astype("float32")).sum() for g in grads
    ]
    return math.sqrt(float(paddle.add_n(squares))) if squares else 0.0


def device_batch(host: TokenBatch) -> dict[str, paddle.Tensor]:
    """A host micro-batch (ftx.core.worker.objectives: right-padded, so plain causal
    attention never lets a real token see padding) as the model's inputs and ``targets``.

    Packed rows keep position_ids (restarting per example) and get FlashMask row indices:
    for each column, the first row that may no longer see it (the end of its example).
    """
    batch = dict(host.arrays)
    batch.pop("token_mask")
    segments = batch.pop("segment_ids", None)
    if segments is not None:
        ends = np.full(segments.shape, segments.shape[1], dtype=np.int32)
        for r, row in enumerate(segments):
            for start, end in segment_spans(row.tolist()):
                ends[r, start:end] = end
        batch["attn_mask_startend_row_indices"] = ends[:, None, :, None]
    return {k: paddle.to_tensor(v) for k, v in batch.items()}


# host-side arrays of a batch that are no model input
MODEL_INPUTS_EXCLUDED = (
    "labels",
    "targets",
    "row_units",
    "row_aux",
    "reference_logps",
    "score_positions",
)


class RewardModel(paddle.nn.Layer):
    """stage rm on PaddleFormers, which has no Llama sequence classifier: its causal LM
    (LoRA applied or not) and a score head beside it, a linear layer [hidden, 1] without
    bias (transformers' ``score``, transposed as Paddle keeps weights), started at zero
    (ftx.core.worker.objectives.PairwiseReward), on the decoder's last hidden state (after
    the final norm) at each row's ``score_positions``. One Layer, so that data parallel
    all-reduces the head's gradients with the model's."""

    def __init__(self, causal: Any):
        super().__init__()
        self.causal = causal
        hidden = decoder(causal).config.hidden_size
        self.score = paddle.nn.Linear(hidden, 1, bias_attr=False)
        self.score.weight.set_value(paddle.zeros([hidden, 1], dtype=self.score.weight.dtype))

    def forward(self, **batch: paddle.Tensor) -> paddle.Tensor:
        """Each row's score [rows], float32."""
        inputs = {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED}
        hidden = decoder(self.causal)(**inputs, return_dict=True).last_hidden_state
        rows = paddle.arange(hidden.shape[0], dtype="int64")
        where = paddle.stack([rows, batch["score_positions"].astype("int64")], axis=-1)
        picked = paddle.gather_nd(hidden, where).astype(self.score.weight.dtype)
        return self.score(picked)[:, 0].astype("float32")

    def head(self) -> np.ndarray:
        """The head in transformers' orientation [1, hidden], float32."""
        return self.score.weight.numpy().astype(np.float32).T.copy()


def decoder(model: Any) -> Any:
    """PaddleFormers' decoder (``LlamaModel``) inside its causal LM, under LoRAModel."""
    from paddleformers.peft import LoRAModel

    causal = model.model if isinstance(model, LoRAModel) else model
    return causal.model


def _logits_and_targets(
    model: Any, batch: dict[str, paddle.Tensor]
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """float32 logits of every position, flattened [rows * length, vocab], and each
    position's next-token target [rows * length] (-100 at the last position).
    (PaddleFormers' own loss expects labels shifted already: ftx's targets are.)

    The targets are padded, not the logits sliced: a slice would copy the
    [rows, length, vocab] logits, and its backward make another such tensor."""
    inputs = {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED}
    logits = model(**inputs, return_dict=True).logits
    if logits.dtype != paddle.float32:
        logits = logits.astype("float32")
    targets = batch["targets"]
    last = paddle.full([targets.shape[0], 1], IGNORE_INDEX, dtype=targets.dtype)
    targets = paddle.concat([targets, last], axis=1)
    return logits.reshape([-1, logits.shape[-1]]), targets.reshape([-1])


def nll_sum(model: Any, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """The next-token cross-entropy summed over the batch's learned targets."""
    logits, targets = _logits_and_targets(model, batch)
    return paddle.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )


def token_logprobs(model: Any, batch: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """log p(target) of every next-token target [rows, length - 1], 0 where it is -100."""
    rows, width = batch["targets"].shape
    logits, targets = _logits_and_targets(model, batch)
    losses = paddle.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -losses.reshape([rows, width + 1])[:, :-1]
