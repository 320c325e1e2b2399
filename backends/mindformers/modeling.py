"""The MindFormers model of a plan: built from OUT/plan/finetune.yaml, Hugging Face
weights read directly, MindFormers' own loss, and its weights written back out.

Runs inside the mindformers environment. The model is MindFormers' legacy
``LlamaForCausalLM`` (a ``PetModel`` around it for LoRA) that ``build_network``
makes from the YAML's ``model`` section, exactly as MindFormers' trainer does. On a
machine without Ascend NPUs the kernels MindSpore's CPU build lacks are switched off
(:func:`cpu_profile`); the weights and the arithmetic are the same.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np

from ftx.backends.mindformers.plan_files import FINETUNE_YAML
from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.errors import FtxError
from ftx.core.prepared import IGNORE_INDEX
from ftx.core.worker.objectives import TokenBatch

LORA = "mindpet_delta_lora"  # MindFormers' LoRA parameter names contain this
DTYPE_KEYS = (
    "compute_dtype",
    "layernorm_compute_type",
    "softmax_compute_type",
    "rotary_dtype",
    "param_init_type",
)


def on_ascend() -> bool:
    return bool(glob.glob("/dev/davinci[0-9]*"))


def read_yaml(layout: RunLayout) -> Any:
    """The plan's finetune.yaml as MindFormers' own MindFormerConfig."""
    from mindformers import MindFormerConfig

    return MindFormerConfig(str(layout.plan / FINETUNE_YAML))


def cpu_profile(config: Any) -> None:
    """Switch off what MindSpore's CPU build has no kernel for: flash attention, the
    fused RMSNorm, the rotary slice op, and any dtype but float32; PyNative mode (the
    training step itself is compiled with ms.jit); no more data workers than CPUs (the
    YAML's 8 are an Ascend server's)."""
    for name in ("train_dataset", "eval_dataset"):
        for dataset in (config.get(name), (config.get(f"{name}_task") or {}).get("dataset_config")):
            if dataset:
                dataset.num_parallel_workers = min(
                    dataset.num_parallel_workers, os.cpu_count() or 1
                )
    section = config.model.model_config
    section.use_flash_attention = False
    section.fused_rms_norm = False
    section.use_rope_slice = True
    for key in DTYPE_KEYS:
        section[key] = "float32"
    config.context.mode = ms.PYNATIVE_MODE
    config.context.device_target = "CPU"
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")


def build_model(config: Any) -> Any:
    """MindFormers' network from the YAML's model section (with LoRA when it has a
    pet_config), its parameters still random."""
    from mindformers.models import build_network

    return build_network(config.model)


def load_hf_weights(net: Any, source: Path, config: Any) -> None:
    """The HF safetensors of ``source``, renamed by MindFormers' own convert_weight_dict
    and loaded strictly (every base parameter must be found; only LoRA's are new)."""
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise FtxError(
            "the model folder has no .safetensors weights",
            where=str(source),
            fix="convert the checkpoint to HF safetensors with `ftx convert SRC DST --to hf`",
        )
    weights: dict[str, Any] = {}
    for path in files:
        weights.update(ms.load_checkpoint(str(path), format="safetensors"))
    converted = net.convert_weight_dict(weights, model_config=config.model.model_config)
    missing, unexpected = ms.load_param_into_net(net, converted, strict_load=True)
    missing = [name for name in missing if LORA not in name]
    if missing or unexpected:
        raise FtxError(
            f"the weights do not fit the MindFormers model: missing {missing[:5]},"
            f" unexpected {unexpected[:5]}",
            where=str(source),
            fix="check that config.json describes these weights",
        )


def start_lora_like_every_backend(net: Any, model_type: str, seed: int) -> None:
    """Every LoRA A from ftx's seeded draw (ftx.core.worker.rules.lora_a_init), the one the
    torch and paddle workers use too (by Hugging Face module name); B stays zero."""
    from ftx.core.convert.names import NameMap
    from ftx.core.worker.rules import lora_a_init

    names = NameMap(model_type, "mindspore", "hf")
    for param in net.get_parameters():
        if not param.name.endswith(f".{LORA}_a"):
            continue
        mapped = names.map(param.name.removesuffix(f".{LORA}_a") + ".weight")
        if mapped is None:
            raise FtxError(f"MindFormers LoRA factor {param.name} has no Hugging Face module")
        rank, fan_in = param.shape
        value = lora_a_init(mapped.name.removesuffix(".weight"), rank, fan_in, seed)
        param.set_data(ms.Tensor(value))


def trainable(net: Any) -> list[Any]:
    return list(net.trainable_params())


def fixed_rows(host: TokenBatch, pad_id: int, width: int) -> dict[str, np.ndarray]:
    """A host micro-batch as MindFormers' legacy models take it: rows of seq_length + 1
    (``width``) tokens, padded with pad_id, labels -100 there, and a loss mask over the
    positions whose next token is learned (the model drops the last input token and the
    first label). Fixed width: the model's causal mask is built for seq_length."""
    rows, length = host.arrays["input_ids"].shape
    ids = np.full((rows, width), pad_id, dtype=np.int32)
    labels = np.full((rows, width), IGNORE_INDEX, dtype=np.int32)
    ids[:, :length] = host.arrays["input_ids"]
    labels[:, :length] = host.arrays["labels"]
    loss_mask = np.zeros((rows, width), dtype=np.float32)
    loss_mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "loss_mask": loss_mask}


def write_hf_model(net: Any, model_type: str, folder: Path) -> None:
    """The base weights (LoRA factors excluded) as one HF model.safetensors."""
    from safetensors.numpy import save_file

    from ftx.core.convert.names import NameMap

    names = NameMap(model_type, "mindspore", "hf")
    tensors: dict[str, np.ndarray] = {}
    for param in net.get_parameters():
        name = param.name
        if LORA in name:
            continue
        array = param.asnumpy().astype(np.float32)
        mapped = names.map(name)
        if mapped is None:
            raise FtxError(f"MindFormers parameter {name} has no Hugging Face name")
        tensors[mapped.name] = np.ascontiguousarray(array)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_mindformers_adapter(net: Any, config: WorkerConfig, pet: Any, folder: Path) -> None:
    """The LoRA factors as MindFormers keeps them: adapter_model.ckpt written by
    mindspore, adapter_config.json and the YAML's pet_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    factors = [{"name": p.name, "data": p} for p in net.get_parameters() if LORA in p.name]
    ms.save_checkpoint(factors, str(folder / "adapter_model.ckpt"))
    settings = {
        "pet_type": "lora",
        "lora_rank": pet.lora_rank,
        "lora_alpha": pet.lora_alpha,
        "lora_dropout": pet.lora_dropout,
        "target_modules": pet.target_modules,
    }
    (folder / "pet_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    adapter = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": pet.lora_rank,
        "lora_alpha": pet.lora_alpha,
        "lora_dropout": pet.lora_dropout,
        "target_modules": str(pet.target_modules).split("|"),
        "bias": "none",
        "base_model_name_or_path": config.model.path,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
