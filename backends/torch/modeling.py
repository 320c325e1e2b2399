"""Model loading (with the fine-tuning method applied), batches on the device, the NLL and
per-token log-probabilities."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from ftx.backends.torch.plan_files import PEFT_CONFIG
from ftx.core.contract import QuantizationArgs, WorkerConfig
from ftx.core.prepared import IGNORE_INDEX
from ftx.core.worker.objectives import TokenBatch
from ftx.core.worker.rules import segment_spans as example_spans

_ZERO3_CONFIG: list[Any] = []  # keeps transformers' ZeRO-3 hook alive during from_pretrained


def load_model(
    config: WorkerConfig,
    plan_dir: Path,
    device: torch.device,
    ds_config: dict | None,
    packed: bool = False,
) -> tuple[Any, Any]:
    """Tokenizer and model, with full / lora / qlora / freeze applied."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    _register_segment_attention()
    hf_logging.disable_progress_bar()
    path, trust = config.model.path, config.model.trust_remote_code
    method, checkpointing = config.method, config.train.gradient_checkpointing
    if ds_config and ds_config["zero_optimization"]["stage"] == 3:
        # Parameters are created already partitioned over ranks (zero.Init), so no
        # rank ever holds the whole model.
        from transformers.integrations import HfDeepSpeedConfig

        _ZERO3_CONFIG.append(HfDeepSpeedConfig(ds_config))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    kind = method.finetuning
    extra: dict[str, Any] = {}
    if method.quantization is not None:
        extra = {
            "quantization_config": quantization_config(method.quantization, config.train.precision),
            "device_map": {"": device.index or 0},
        }
    if method.stage == "rm":
        extra.update(num_labels=1, pad_token_id=pad_id(tokenizer))
    head = AutoModelForSequenceClassification if method.stage == "rm" else AutoModelForCausalLM
    model = head.from_pretrained(
        path,
        dtype=getattr(torch, config.model.dtype),
        trust_remote_code=trust,
        attn_implementation=attention_implementation(packed),
        **extra,
    )
    if method.stage == "rm":
        start_score_at_zero(model)
    if kind == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    else:
        model = model.to(device)
    if kind in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        peft_kwargs = json.loads((plan_dir / PEFT_CONFIG).read_text())
        model = get_peft_model(model, LoraConfig(**peft_kwargs))
        start_lora_like_every_backend(model, config.train.seed)
    elif kind == "freeze" and method.freeze_trainable_layers is not None:
        freeze_layers(model, method.freeze_trainable_layers)
        if method.stage == "rm":
            model.score.weight.requires_grad = True  # a reward model's head always trains
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if kind in ("lora", "qlora"):
            model.enable_input_require_grads()
        model.config.use_cache = False
    return tokenizer, model


def pad_id(tokenizer: Any) -> int:
    """The pad id the prepared data uses (the tokenizer's, else its end of text)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def start_score_at_zero(model: Any) -> None:
    """A reward model's score head at zero (ftx.core.worker.objectives.PairwiseReward): every
    score starts at 0, on every backend, whatever transformers' random init would draw."""
    weight = model.score.weight
    with _gathered(weight), torch.no_grad():
        weight.zero_()


def start_lora_like_every_backend(model: Any, seed: int) -> None:
    """Every LoRA A from ftx's seeded draw (ftx.core.worker.rules.lora_a_init), the one the
    paddle and mindformers workers use too; B stays PEFT's zeros."""
    from ftx.core.worker.rules import hf_module, lora_a_init

    for name, module in model.named_modules():
        factors = getattr(module, "lora_A", None)
        if factors is None or "default" not in factors:
            continue
        weight = factors["default"].weight
        gathered = _gathered(weight)
        with gathered, torch.no_grad():
            rank, fan_in = weight.shape
            value = lora_a_init(str(hf_module(name)), rank, fan_in, seed)
            weight.copy_(torch.from_numpy(value).to(weight.dtype))


def _gathered(weight: torch.Tensor) -> Any:
    """A context holding the whole parameter (ZeRO-3 keeps only a shard per rank)."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([weight], modifier_rank=0)
    return contextlib.nullcontext()


def quantization_config(spec: QuantizationArgs, precision: str) -> Any:
    """bitsandbytes settings for QLoRA: 4-bit nf4/fp4 (optionally double-quantised) or 8-bit."""
    from transformers import BitsAndBytesConfig

    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def attention_implementation(packed: bool = False) -> str:
    """FlashAttention-2 where it is installed on a GPU (packed rows isolated through
    position_ids, varlen); elsewhere sdpa, run example by example for packed rows."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return SEGMENT_ATTENTION if packed else "sdpa"


SEGMENT_ATTENTION = "ftx_segments"


def segment_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention computed separately for each example of a packed row.

    A block-diagonal mask gives the same result but still computes every
    cross-example score; this skips them (a CPU stand-in for varlen kernels).
    Without ``ftx_segments`` (generation, unpacked evaluation) it is plain sdpa.
    """
    spans = kwargs.get("ftx_segments")
    if spans is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: share each key/value head
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = torch.zeros_like(query)
    p = dropout if module.training else 0.0
    for row, row_spans in enumerate(spans):
        for start, end in row_spans:
            out[row : row + 1, :, start:end] = torch.nn.functional.scaled_dot_product_attention(
                query[row : row + 1, :, start:end],
                key[row : row + 1, :, start:end],
                value[row : row + 1, :, start:end],
                is_causal=True,
                dropout_p=p,
                scale=scaling,
            )
    return out.transpose(1, 2).contiguous(), None


def _register_segment_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)


def freeze_layers(model: Any, trainable: int) -> None:
    """Train only the last ``trainable`` decoder layers (the first ones when negative)."""
    layers = model.model.layers
    keep = range(len(layers) - trainable, len(layers)) if trainable > 0 else range(-trainable)
    for param in model.parameters():
        param.requires_grad = False
    for index in keep:
        for param in layers[index].parameters():
            param.requires_grad = True


def device_batch(host: TokenBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """A host micro-batch (ftx.core.worker.objectives) as the model's inputs on ``device``,
    plus its ``targets``.

    Packed rows keep position_ids (restarting per example) and each example to itself:
    FlashAttention-2's varlen kernels find the examples from the position ids; otherwise
    sdpa runs example by example (``ftx_segments``) or, where that attention is not
    registered, a 4-D block-diagonal causal mask does.
    """
    arrays = {k: torch.from_numpy(v) for k, v in host.arrays.items()}
    segments = arrays.pop("segment_ids", None)
    # token_mask (real, non-pad tokens) is not a model input; attention_mask starts as it.
    batch = {**arrays, "attention_mask": arrays.pop("token_mask").clone()}
    if segments is not None:
        implementation = attention_implementation(packed=True)
        if implementation == "flash_attention_2":
            del batch["attention_mask"]  # varlen kernels find the examples from position_ids
        elif implementation == SEGMENT_ATTENTION:
            del batch["attention_mask"]
            moved = {k: v.to(device) for k, v in batch.items()}
            moved["ftx_segments"] = segment_spans(segments)
            return moved
        else:
            batch["attention_mask"] = block_causal_mask(segments)
    return {k: v.to(device) for k, v in batch.items()}


def segment_spans(segments: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(start, end) of every example in each packed row (segment 0 is padding)."""
    return [example_spans(row) for row in segments.tolist()]


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(batch, 1, L, L) bool: token i sees token j iff same example and j <= i.

    Padding (segment 0) sees only itself, which keeps softmax finite; its
    labels are -100, so it never reaches the loss.
    """
    length = segments.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    eye = torch.eye(length, dtype=torch.bool)
    return ((causal & same) | eye)[:, None]


# host-side arrays of a batch that are no model input
MODEL_INPUTS_EXCLUDED = ("labels", "targets", "row_units", "row_aux", "reference_logps")


def _logits_and_targets(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits of every position, flattened [rows * length, vocab], and each
    position's next-token target [rows * length] (-100 at the last position).

    The targets are shifted, not the logits: slicing off the last position would copy the
    [rows, length, vocab] logits, and its backward make another such tensor (at Qwen2.5's
    151,936 rows, 0.6 GB each for two rows of 512; transformers' loss shifts labels too)."""
    inputs = {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDED}
    logits = model(**inputs).logits
    targets = torch.nn.functional.pad(batch["targets"], (0, 1), value=IGNORE_INDEX)
    return logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1)


def nll_sum(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The next-token cross-entropy summed over the batch's learned targets."""
    logits, targets = _logits_and_targets(model, batch)
    return torch.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )


def token_logprobs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """log p(target) of every next-token target [rows, length - 1], 0 where it is -100."""
    rows, width = batch["targets"].shape
    logits, targets = _logits_and_targets(model, batch)
    losses = torch.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -losses.reshape(rows, width + 1)[:, :-1]
