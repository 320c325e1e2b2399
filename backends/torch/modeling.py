"""Model loading (with the fine-tuning method applied), batching and the loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftx.core.prepared import PreparedSplit

IGNORE = -100
_ZERO3_CONFIG: list[Any] = []  # keeps transformers' ZeRO-3 hook alive during from_pretrained


def load_model(
    cfg: dict[str, Any], plan_dir: Path, device: torch.device, ds_config: dict | None
) -> tuple[Any, Any]:
    """Tokenizer and model, with full / lora / freeze applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_cfg, method = cfg["model"], cfg["method"]
    path = model_cfg["model_name_or_path"]
    trust = model_cfg["trust_remote_code"]
    if ds_config and ds_config["zero_optimization"]["stage"] == 3:
        # Parameters are created already partitioned over ranks (zero.Init), so no
        # rank ever holds the whole model.
        from transformers.integrations import HfDeepSpeedConfig

        _ZERO3_CONFIG.append(HfDeepSpeedConfig(ds_config))
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, model_cfg["torch_dtype"]), trust_remote_code=trust
    ).to(device)
    kind = method["finetuning_type"]
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        peft_kwargs = json.loads((plan_dir / method["peft_config"]).read_text())
        model = get_peft_model(model, LoraConfig(**peft_kwargs))
    elif kind == "freeze":
        freeze_layers(model, method["freeze_trainable_layers"])
    if cfg["training_args"]["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if kind == "lora":
            model.enable_input_require_grads()
        model.config.use_cache = False
    return tokenizer, model


def freeze_layers(model: Any, trainable: int) -> None:
    """Train only the last ``trainable`` decoder layers (the first ones when negative)."""
    layers = model.model.layers
    keep = range(len(layers) - trainable, len(layers)) if trainable > 0 else range(-trainable)
    for param in model.parameters():
        param.requires_grad = False
    for index in keep:
        for param in layers[index].parameters():
            param.requires_grad = True


def collate(
    split: PreparedSplit, indices: list[int], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad a micro-batch to its longest example (labels -100 on padding)."""
    rows = [split[i] for i in indices]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        labels[r, : len(lab)] = torch.from_numpy(lab.astype(np.int64))
        attention[r, : len(ids)] = 1
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "attention_mask": attention.to(device),
    }


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over learned tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((targets != IGNORE).sum())
