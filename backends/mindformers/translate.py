"""The mindformers backend's translator: recipe + model config -> finetune.yaml,
worker.json and launch.sh (msrun for more than one worker).

Pure: no file is read or written. ``finetune.yaml`` is the legacy MindFormers run
config (``run_mode: finetune``) of a Llama-architecture model, the form MindFormers'
own Llama 2 and Qwen2 fine-tune configs take, with the values an Ascend run uses
(flash attention, fused RMSNorm, graph mode). The MindRecord data it reads
(``plan/data/``) is written next to it by :mod:`ftx.backends.mindformers.export` from
the core's prepared rows; the weights are the Hugging Face safetensors themselves
(``load_ckpt_format: safetensors``). The ftx worker builds its model from this same
file (see :mod:`ftx.backends.mindformers.worker`). Paths are relative to OUT.
"""

from __future__ import annotations

from typing import Any

import yaml

from ftx.backends.mindformers import SPEC
from ftx.backends.mindformers.model_section import legacy_model_section
from ftx.backends.mindformers.plan_files import (
    EVAL_RECORD,
    FINETUNE_YAML,
    MCORE_DATA,
    MSRUN_LOGS,
    NATIVE_OUTPUT,
    TRAIN_RECORD,
    WORKER_SCRIPT,
)
from ftx.core.contract import WORKER_CONFIG
from ftx.core.errors import FtxError
from ftx.core.models.architectures import ModelConfig
from ftx.core.nodes import MASTER_ADDR, MASTER_PORT, NODE_RANK, NodeContract, var
from ftx.core.plan import NativePlan
from ftx.core.recipe.schema import Recipe
from ftx.core.worker_config import worker_config

LEGACY_MODELS = ("llama", "qwen2")  # MindFormers' legacy LlamaForCausalLM
MCORE_MODELS = ("qwen3",)  # MindFormers' MCore models: architecture from config.json
MCORE_COLUMNS = ["input_ids", "labels", "loss_mask", "position_ids"]
# Hugging Face projection names -> MindFormers' legacy LlamaForCausalLM module names.
MODULES = {
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "o_proj": "wo",
    "gate_proj": "w1",
    "down_proj": "w2",
    "up_proj": "w3",
}
SCHEDULES = {
    "cosine": "CosineWithWarmUpLR",
    "linear": "LinearWithWarmUpLR",
    "constant": "ConstantWarmUpLR",
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CHECKPOINT_FOREVER = 10**9  # save_checkpoint_steps when the recipe saves no checkpoints


def refuse_what_mindformers_cannot_do(recipe: Recipe, model: ModelConfig) -> None:
    """A validation error naming the first recipe key MindFormers has no setting for."""
    m, t = recipe.method, recipe.train
    if model.model_type not in (*LEGACY_MODELS, *MCORE_MODELS):
        raise FtxError(
            f"the model is {model.architecture} ({model.model_type}); ftx translates"
            f" Llama-architecture models ({', '.join(LEGACY_MODELS)}) to MindFormers' legacy"
            f" LlamaForCausalLM and {', '.join(MCORE_MODELS)} to its MCore path",
            where=f"{recipe.model.path}/config.json: model_type",
            fix="use a Llama 2/3, Qwen2/2.5 or Qwen3 model, or --backend torch",
        )
    if model.model_type in MCORE_MODELS and m.finetuning != "full":
        raise FtxError(
            f"method.finetuning is {m.finetuning}; MindFormers' MCore {model.model_type} has no"
            " LoRA (pet_config is the legacy models')",
            where="method.finetuning",
            fix="set method.finetuning to full, or use --backend torch",
        )
    problems = {
        "method.lora.dora": m.finetuning == "lora" and m.lora.dora,
        "method.lora.rslora": m.finetuning == "lora" and m.lora.rslora,
    }
    for key, bad in problems.items():
        if bad:
            raise FtxError(
                f"{key} is set, and MindFormers' LoRA (pet_config) has no setting for it",
                where=key,
                fix=f"set {key} to false, or use --backend torch",
            )
    if t.max_steps is None and t.num_epochs != int(t.num_epochs):
        raise FtxError(
            f"train.epochs is {t.num_epochs}; MindFormers runs whole epochs (runner_config.epochs)",
            where="train.epochs",
            fix="set a whole number of epochs, or train.max_steps",
        )
    if m.finetuning == "lora" and m.lora.targets != "all":
        unknown = [name for name in m.lora.targets if name not in MODULES]
        if unknown:
            raise FtxError(
                f"method.lora.targets names {', '.join(unknown)}, which MindFormers' Llama"
                " has no module for",
                where="method.lora.targets",
                fix=f"use names among {', '.join(MODULES)}, or all",
            )


def pet_config(recipe: Recipe) -> dict[str, Any]:
    """``model.model_config.pet_config``: LoRA with a regex over MindFormers module names."""
    lora = recipe.method.lora
    names = MODULES.values() if lora.targets == "all" else [MODULES[n] for n in lora.targets]
    return {
        "pet_type": "lora",
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": "|".join(f".*{name}" for name in names),
    }


def model_config(recipe: Recipe, model: ModelConfig) -> dict[str, Any]:
    """``model.model_config``: the HF config in MindFormers' LlamaConfig names, with the
    settings of an Ascend run (the worker switches the kernels CPU lacks)."""
    section = legacy_model_section(
        model,
        seq_length=recipe.data.max_seq_len,
        batch_size=recipe.train.micro_batch_size,
        dtype=DTYPES[recipe.train.precision],
        flash=recipe.backends.get(SPEC.name, {}).get("use_flash_attention", True),
    )
    if recipe.method.finetuning == "lora":
        section["pet_config"] = pet_config(recipe)
    return section


def _dataset(path: str, recipe: Recipe, shuffle: bool) -> dict[str, Any]:
    """A MindRecord split as the trainer reads it; the evaluation set (not shuffled)
    keeps its last, smaller batch: a set smaller than one batch is still evaluated."""
    return {
        "data_loader": {"type": "MindDataset", "dataset_dir": path, "shuffle": shuffle},
        "input_columns": ["input_ids", "labels"],
        "num_parallel_workers": 8,
        "python_multiprocessing": False,
        "drop_remainder": shuffle,
        "batch_size": recipe.train.micro_batch_size,
        "repeat": 1,
        "numa_enable": False,
        "prefetch_size": 1,
        "seed": recipe.data.seed,
    }


def _schedule(recipe: Recipe) -> dict[str, Any]:
    t = recipe.train
    native = recipe.backends.get(SPEC.name, {})
    schedule: dict[str, Any] = {
        "type": SCHEDULES[t.scheduler],
        "learning_rate": t.learning_rate,
        "total_steps": t.max_steps or -1,  # -1: epochs x steps per epoch
    }
    if t.scheduler != "constant":
        schedule["lr_end"] = 0.0
    if t.warmup_steps:
        schedule["warmup_steps"] = t.warmup_steps
    else:
        schedule["warmup_ratio"] = t.warmup_ratio or 0.0
    optimizer = {
        "type": "AdamW",
        "betas": [native.get("adam_beta1", 0.9), native.get("adam_beta2", 0.999)],
        "eps": native.get("adam_epsilon", 1e-8),
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
    }
    if t.precision == "fp16":
        scale: Any = {
            "type": "DynamicLossScaleUpdateCell",
            "loss_scale_value": 65536,
            "scale_factor": 2,
            "scale_window": 1000,
        }
    else:
        scale = 1.0
    wrapper = {
        "type": "MFTrainOneStepCell",
        "scale_sense": scale,
        "use_clip_grad": t.max_grad_norm > 0,
        "max_grad_norm": t.max_grad_norm,
    }
    return {"runner_wrapper": wrapper, "optimizer": optimizer, "lr_schedule": schedule}


def _parallel(recipe: Recipe) -> dict[str, Any]:
    p, t = recipe.parallel, recipe.train
    return {
        "parallel": {
            "parallel_mode": 1,  # semi-automatic: the parallel_config below decides
            "gradients_mean": False,
            "enable_alltoall": False,
            "full_batch": True,
            "search_mode": "sharding_propagation",
            "enable_parallel_optimizer": bool(p.zero),
            "strategy_ckpt_save_file": f"{NATIVE_OUTPUT}/strategy/ckpt_strategy.ckpt",
        },
        "parallel_config": {
            "data_parallel": p.dp,
            "model_parallel": p.tp,
            "pipeline_stage": p.pp,
            "use_seq_parallel": False,
            # With pipeline stages MindFormers accumulates through micro batches.
            "micro_batch_num": t.grad_accum if p.pp > 1 else 1,
            "vocab_emb_dp": True,
            "gradient_aggregation_group": 4,
        },
        "recompute_config": {
            "recompute": t.gradient_checkpointing,
            "select_recompute": False,
            "parallel_optimizer_comm_recompute": False,
            "mp_comm_recompute": True,
            "recompute_slice_activation": t.gradient_checkpointing,
        },
    }


def _epochs(recipe: Recipe) -> int:
    """runner_config.epochs: the recipe's, or with max_steps as many as max_steps (an
    epoch has a step at least), the TrainCallBack of :func:`_callbacks` stopping there."""
    t = recipe.train
    return t.max_steps if t.max_steps else int(t.num_epochs)


def _callbacks(recipe: Recipe, model: ModelConfig) -> list[dict[str, Any]]:
    """The loss monitor, checkpoints and, with max_steps, the stop: MindFormers 1.9 builds
    runner_config.stop_step's callback and never adds it to the run."""
    t = recipe.train
    native = recipe.backends.get(SPEC.name, {})
    stop = [{"type": "TrainCallBack", "stop_step": t.max_steps}] if t.max_steps else []
    return [
        {"type": "MFLossMonitor", "per_print_times": t.logging_steps},
        {
            "type": "CheckpointMonitor",
            "prefix": model.model_type,
            "save_checkpoint_steps": t.save_steps or CHECKPOINT_FOREVER,
            "keep_checkpoint_max": t.save_total_limit or 1,
            "integrated_save": False,
            "async_save": False,
            "checkpoint_format": native.get("checkpoint_format", "safetensors"),
        },
        *stop,
    ]


def _context(recipe: Recipe) -> dict[str, Any]:
    return {
        "mode": 0,
        "device_target": "Ascend",
        "max_call_depth": 10000,
        "max_device_memory": recipe.backends.get(SPEC.name, {}).get("max_device_memory", "58GB"),
        "device_id": 0,
    }


def _mcore_dataset(recipe: Recipe, split: str, shuffle: bool) -> dict[str, Any]:
    """HFDataLoader over the core's rows as JSON Lines: input_ids of seq_length, labels
    already shifted (MCore's convention), loss mask, positions; no handler re-tokenises."""
    return {
        "input_columns": list(MCORE_COLUMNS),
        "construct_args_key": list(MCORE_COLUMNS),
        "data_loader": {
            "type": "HFDataLoader",
            "load_func": "load_dataset",
            "path": "json",
            "data_files": f"{MCORE_DATA}/{split}.jsonl",
            "split": "train",  # datasets' name for the rows of data_files
            "create_attention_mask": False,
            "create_compressed_eod_mask": False,
            "compressed_eod_mask_length": 128,
            "use_broadcast_data": True,
            "shuffle": shuffle,
        },
        "batch_size": recipe.train.micro_batch_size,
        "repeat": 1,
        "num_parallel_workers": 8,
        "python_multiprocessing": False,
        "drop_remainder": True,
        "numa_enable": False,
        "prefetch_size": 1,
        "seed": recipe.data.seed,
    }


def mcore_yaml(recipe: Recipe, model: ModelConfig) -> dict[str, Any]:
    """The MCore run config (``use_legacy: False``): the architecture comes from the HF
    folder itself (``pretrained_model_dir``), the YAML holds MindFormers' own settings."""
    t, p = recipe.train, recipe.parallel
    config: dict[str, Any] = {
        "seed": t.seed,
        "output_dir": NATIVE_OUTPUT,
        "run_mode": "finetune",
        "use_legacy": False,
        "pretrained_model_dir": recipe.model.path,
        "load_checkpoint": recipe.model.path,
        "load_ckpt_format": "safetensors",
        "auto_trans_ckpt": p.world_size > 1,
        "src_strategy_path_or_dir": "",
        "only_save_strategy": False,
        "resume_training": bool(t.resume),
        "use_parallel": p.world_size > 1,
        "trainer": {"type": "CausalLanguageModelingTrainer", "model_name": model.model_type},
        "runner_config": {
            "epochs": _epochs(recipe),
            "batch_size": t.micro_batch_size,
            "gradient_accumulation_steps": t.grad_accum if p.pp == 1 else 1,
            "stop_step": t.max_steps or 0,
        },
        **_schedule(recipe),
        "train_dataset": _mcore_dataset(recipe, "train", shuffle=True),
        "context": {**_context(recipe), "jit_config": {"jit_level": "O0"}},
        "parallel_config": {
            "data_parallel": p.dp,
            "model_parallel": p.tp,
            "pipeline_stage": p.pp,
            "micro_batch_num": t.grad_accum if p.pp > 1 else 1,
            "use_seq_parallel": False,
            "gradient_aggregation_group": 1,
        },
        "parallel": {
            "parallel_mode": 1,
            "enable_alltoall": False,
            "full_batch": False,
            "dataset_strategy": [[p.dp, 1] for _ in MCORE_COLUMNS],
            "search_mode": "sharding_propagation",
            "strategy_ckpt_config": {
                "save_file": f"{NATIVE_OUTPUT}/strategy/ckpt_strategy.ckpt",
                "only_trainable_params": False,
            },
            "enable_parallel_optimizer": bool(p.zero),
        },
        "recompute_config": _parallel(recipe)["recompute_config"],
        "model": {
            "model_config": {
                "compute_dtype": DTYPES[t.precision],
                "params_dtype": "float32",
                "layernorm_compute_dtype": "float32",
                "softmax_compute_dtype": "float32",
                "rotary_dtype": "float32",
                "hidden_dropout": 0.0,
                "input_sliced_sig": True,  # the rows are already shifted
                "untie_embeddings_and_output_weights": not model.tie_word_embeddings,
                "position_embedding_type": "rope",
                "qkv_concat": False,
                "offset": 0,
            }
        },
        "callbacks": _callbacks(recipe, model),
    }
    config["train_dataset_task"] = {
        "type": "CausalLanguageModelDataset",
        "dataset_config": config["train_dataset"],
    }
    return config


def finetune_yaml(recipe: Recipe, model: ModelConfig) -> dict[str, Any]:
    """The MindFormers run config of a recipe, section by section: the legacy form for
    Llama-architecture models, the MCore form for Qwen3."""
    refuse_what_mindformers_cannot_do(recipe, model)
    if model.model_type in MCORE_MODELS:
        return mcore_yaml(recipe, model)
    t, p = recipe.train, recipe.parallel
    has_eval = recipe.data.val_size > 0 and bool(t.eval_steps)
    config: dict[str, Any] = {
        "seed": t.seed,
        "output_dir": NATIVE_OUTPUT,
        "run_mode": "finetune",
        "use_parallel": p.world_size > 1,
        "load_checkpoint": recipe.model.path,  # the HF folder: MindFormers reads safetensors
        "load_ckpt_format": "safetensors",
        "auto_trans_ckpt": p.world_size > 1,  # reshard the whole weights to the strategy
        "src_strategy_path_or_dir": "",
        "only_save_strategy": False,
        "resume_training": bool(t.resume),
        "do_eval": has_eval,
        "trainer": {"type": "CausalLanguageModelingTrainer", "model_name": model.model_type},
        "runner_config": {
            "epochs": _epochs(recipe),
            "batch_size": t.micro_batch_size,
            "sink_mode": True,
            "sink_size": 1,
            "gradient_accumulation_steps": t.grad_accum if p.pp == 1 else 1,
            "stop_step": t.max_steps or 0,
        },
        **_schedule(recipe),
        **_parallel(recipe),
        "context": _context(recipe),
        "model": {
            "model_config": model_config(recipe, model),
            "arch": {"type": "LlamaForCausalLM"},
        },
        "train_dataset": _dataset(TRAIN_RECORD, recipe, shuffle=True),
        "callbacks": _callbacks(recipe, model),
    }
    config["train_dataset_task"] = {
        "type": "CausalLanguageModelDataset",
        "dataset_config": config["train_dataset"],
    }
    if has_eval:
        config["eval_step_interval"] = t.eval_steps
        config["eval_epoch_interval"] = -1
        config["metric"] = {"type": "PerplexityMetric"}  # eval loss: ftx's eval_loss
        config["eval_dataset"] = _dataset(EVAL_RECORD, recipe, shuffle=False)
        config["eval_dataset_task"] = {
            "type": "CausalLanguageModelDataset",
            "dataset_config": config["eval_dataset"],
        }
    return config


def launch_command(recipe: Recipe) -> list[str]:
    """msrun with the recipe's topology (it starts a script); plain python for one worker."""
    p = recipe.parallel
    if p.world_size == 1:
        return ["python", "-m", str(SPEC.worker), WORKER_CONFIG]
    command = [
        "msrun",
        "--worker_num",
        str(p.world_size),
        "--local_worker_num",
        str(p.nproc_per_node),
        "--master_port",
        var(MASTER_PORT) if p.nnodes > 1 else str(p.master_port),
    ]
    if p.nnodes > 1:
        command += ["--master_addr", var(MASTER_ADDR), "--node_rank", var(NODE_RANK)]
    return [
        *command,
        "--log_dir",
        MSRUN_LOGS,
        "--join",
        "True",
        "--cluster_time_out",
        "600",
        f"plan/{WORKER_SCRIPT}",
        WORKER_CONFIG,
    ]


def translate(recipe: Recipe, model: ModelConfig) -> NativePlan:
    """The mindformers plan of a recipe (with its backends.mindformers section applied)."""
    document = finetune_yaml(recipe, model)
    files = {FINETUNE_YAML: yaml.safe_dump(document, sort_keys=False)}
    if recipe.parallel.world_size > 1:
        # An import, not runpy: MindSpore compiles the worker's functions from their
        # module's globals, which runpy's temporary __main__ namespace does not keep.
        files[WORKER_SCRIPT] = (
            f"# The {SPEC.worker} module as a script, for msrun.\n"
            "import sys\n\n"
            "from ftx.core.worker.entry import run_worker\n"
            f"from {SPEC.worker} import main\n\n"
            "sys.exit(run_worker(main))\n"
        )
    # MindFormers writes its logs (and LoRA's adapter_config.json) under LOCAL_DEFAULT_PATH.
    env = {"LOCAL_DEFAULT_PATH": NATIVE_OUTPUT, "TOKENIZERS_PARALLELISM": "false"}
    return NativePlan(
        backend=SPEC.name,
        worker_config=worker_config(recipe, SPEC.name),
        files=files,
        command=launch_command(recipe),
        nodes=NodeContract.plan_of(recipe.parallel) if recipe.parallel.nnodes > 1 else None,
        env=env,
        notes=plan_notes(recipe),
    )


def plan_notes(recipe: Recipe) -> tuple[str, ...]:
    """What finetune.yaml cannot say: MindFormers 1.9 trains sft and pt only."""
    stage = recipe.method.stage
    if stage in ("sft", "pt"):
        return ()
    trainer = (
        f"method.stage {stage}: MindFormers 1.9 has no {stage} trainer (its DPO trainer"
        " existed in 1.4-1.5 only; Qwen2 DPO lives in the separate MindRLHF). finetune.yaml"
        " describes the model, optimizer and schedule, and ftx's mindformers worker trains"
        f" {stage} on them with MindFormers' own network, on MindSpore's CPU kernels."
        " MindFormers' Trainer would fine-tune (sft) with this file."
    )
    if stage == "rm":
        return (
            trainer,
            "MindFormers has no Llama sequence classifier: the score head (zero at first, on"
            " the decoder's last hidden state at each row's last token) trains beside the"
            " causal LM, and OUT/final is transformers' *ForSequenceClassification (the head"
            " also as score.safetensors beside MindFormers' own files).",
        )
    return (
        trainer,
        "The reference (method.preference.reference auto) is scored once before training"
        " (reference_logps.npy beside the prepared split): PetModel has no switch that turns"
        " LoRA off, and a second network would double the memory.",
    )
