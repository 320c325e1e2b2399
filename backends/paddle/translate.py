"""The paddle backend's translator: recipe -> paddleformers.yaml, run_finetune.json,
lora/lora_config.json, worker.json and launch.sh.

Pure: no file is read or written. ``paddleformers.yaml`` is what
`paddleformers-cli train` takes (only keys PaddleFormers' own argument parser
accepts); ``run_finetune.json`` is the same run for PaddleNLP 3.0's
``llm/run_finetune.py``. Their data (``plan/data/``) is written next to them by
:func:`ftx.backends.paddle.export.export_plan_data`, from the same conversations
and template as the tokens the ftx worker trains on. Paths are relative to OUT.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ftx.backends.paddle import SPEC
from ftx.backends.paddle.plan_files import (
    LORA_CONFIG,
    MESSAGES,
    NATIVE_OUTPUT,
    PADDLEFORMERS_YAML,
    PADDLENLP,
    RUN_FINETUNE_JSON,
    TEMPLATE_MODULE,
    WORKER_SCRIPT,
    template_name,
)
from ftx.core.contract import WORKER_CONFIG
from ftx.core.errors import FtxError
from ftx.core.models.architectures import ModelConfig
from ftx.core.nodes import MASTER_ADDR, MASTER_PORT, NODE_RANK, NodeContract, var
from ftx.core.plan import NativePlan
from ftx.core.recipe.schema import Recipe
from ftx.core.worker_config import worker_config

# Every linear layer of a Llama-architecture decoder: recipe `lora.targets: all`.
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARDING = {1: "stage1", 2: "stage2", 3: "stage3"}
PADDLEFORMERS_STAGES = ("sft", "pt", "dpo")  # what paddleformers-cli train dispatches


def refuse_what_paddleformers_cannot_do(recipe: Recipe) -> None:
    """A validation error naming the first recipe key PaddleFormers has no setting for."""
    m, d = recipe.method, recipe.data
    problems = {
        "method.lora.dora": m.finetuning == "lora" and m.lora.dora,
        "data.train_on_prompt": d.train_on_prompt,
        "data.mask_history": d.mask_history,
    }
    for key, bad in problems.items():
        if bad:
            raise FtxError(
                f"{key} is set, and PaddleFormers has no setting for it (its trainer and its"
                " data formats would train something else than this recipe says)",
                where=key,
                fix=f"set {key} to false, or use --backend torch",
            )
    if recipe.output.report_to == "tensorboard":
        raise FtxError(
            "output.report_to is tensorboard, and the paddle environment has no TensorBoard"
            " writer (PaddleFormers logs to VisualDL)",
            where="output.report_to",
            fix="set it to none: OUT/metrics.jsonl holds every logged row and `ftx report OUT`"
            " plots it",
        )


def lora_config(recipe: Recipe) -> dict[str, Any]:
    """LoRA settings in the lora_config.json form PaddleFormers' and PaddleNLP's LoRAConfig
    both read (`lora_path` pointing at a folder holding only this file makes either
    create fresh adapters with these settings rather than its hard-coded ones)."""
    lora = recipe.method.lora
    names = LLAMA_LINEARS if lora.targets == "all" else lora.targets
    return {
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": [f".*{name}.*" for name in names],
        "rslora": lora.rslora,
        "dtype": "float32" if recipe.train.precision == "fp32" else "bfloat16",
    }


def _schedule(recipe: Recipe) -> dict[str, Any]:
    t = recipe.train
    keys: dict[str, Any] = {
        "num_train_epochs": t.num_epochs,
        "max_steps": t.max_steps or -1,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.scheduler,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "per_device_train_batch_size": t.micro_batch_size,
        "per_device_eval_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "seed": t.seed,
        "logging_steps": t.logging_steps,
    }
    if t.warmup_steps:
        keys["warmup_steps"] = t.warmup_steps
    else:
        keys["warmup_ratio"] = t.warmup_ratio or 0.0
    native = recipe.backends.get(SPEC.name, {})
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if key in native:
            keys[key] = native[key]
    return keys


def _saving(recipe: Recipe, has_eval: bool) -> dict[str, Any]:
    t = recipe.train
    keys: dict[str, Any] = {
        "save_strategy": "steps" if t.save_steps else "no",
        "evaluation_strategy": "steps" if (t.eval_steps and has_eval) else "no",
    }
    if t.save_steps:
        keys["save_steps"] = t.save_steps
    if t.save_total_limit:
        keys["save_total_limit"] = t.save_total_limit
    if t.eval_steps and has_eval:
        keys["eval_steps"] = t.eval_steps
    return keys


def _precision(recipe: Recipe) -> dict[str, Any]:
    precision = recipe.train.precision
    if precision == "fp32":
        return {"bf16": False, "fp16": False}
    # O2: the model held in bf16/fp16 with fp32 master weights, as PaddleFormers' examples.
    return {precision: True, "fp16_opt_level": "O2", "amp_master_grad": True}


def _parallel(recipe: Recipe) -> dict[str, Any]:
    p, t = recipe.parallel, recipe.train
    keys: dict[str, Any] = {
        "tensor_model_parallel_size": p.tp,
        "pipeline_model_parallel_size": p.pp,
    }
    if p.zero:
        keys["sharding"] = SHARDING[p.zero] + (" offload" if p.offload != "none" else "")
        keys["sharding_parallel_size"] = p.dp
    else:
        keys["sharding"] = ""  # absent, PaddleFormers shards stage1 over every worker
    if t.gradient_checkpointing:
        keys.update(recompute_granularity="full", recompute_method="uniform")
        keys["recompute_num_layers"] = 1
    return keys


def _checkpoints(unified: bool) -> dict[str, Any]:
    """Checkpoint settings: unified checkpoints are read and written in that format by
    name (left to PaddleFormers, several workers load and save with flex_checkpoint's
    CUDA collectives)."""
    if not unified:
        return {"unified_checkpoint": False}
    formats = {f"{way}_checkpoint_format": "unified_checkpoint" for way in ("load", "save")}
    return {"unified_checkpoint": True, **formats}


def paddleformers_config(recipe: Recipe) -> dict[str, Any]:
    """The flat paddleformers.yaml of a recipe, in PaddleFormers' own key names."""
    refuse_what_paddleformers_cannot_do(recipe)
    m, d = recipe.method, recipe.data
    # PaddleFormers refuses do_eval without an evaluation strategy; without eval_steps
    # ftx's worker evaluates once, at the end (the native run under ftx does too).
    has_eval = d.val_size > 0 and bool(recipe.train.eval_steps)
    data_keys: dict[str, Any] = {
        "train_dataset_type": "messages",
        "train_dataset_path": f"{MESSAGES}/train.jsonl",
        "train_dataset_prob": "1.0",
        "eval_dataset_type": "messages",
        "eval_dataset_path": f"{MESSAGES}/eval.jsonl",
        "eval_dataset_prob": "1.0",
        "max_seq_len": d.max_seq_len,
        "packing": d.packing,
        "mix_strategy": "concat",
    }
    if recipe.model.template == "auto":
        data_keys["template_backend"] = "jinja"  # the chat template saved with the tokenizer
    else:
        data_keys.update(
            template_backend="custom",
            template=template_name(recipe.model.template),
            custom_register_path=TEMPLATE_MODULE,
        )
    model_keys: dict[str, Any] = {
        "model_name_or_path": recipe.model.path,
        "stage": m.stage.upper(),
        "fine_tuning": "LoRA" if m.finetuning == "lora" else "full",
    }
    if m.finetuning == "lora":
        model_keys.update(
            lora=True,
            lora_rank=m.lora.rank,
            lora_alpha=m.lora.alpha,
            rslora=m.lora.rslora,
            lora_path=f"plan/{LORA_CONFIG.rsplit('/', 1)[0]}",
        )
    native = recipe.backends.get(SPEC.name, {})
    train_keys: dict[str, Any] = {
        "do_train": True,
        "do_eval": has_eval,
        **_schedule(recipe),
        **_saving(recipe, has_eval),
        **_precision(recipe),
        **_parallel(recipe),
        "output_dir": NATIVE_OUTPUT,
        "logging_dir": f"{NATIVE_OUTPUT}/visualdl",
        "disable_tqdm": True,
        **_checkpoints(native.get("unified_checkpoint", True)),
        "save_to_hf": True,
    }
    if m.stage == "dpo":
        data_keys["max_prompt_len"] = max(d.max_seq_len - 1, 1)  # the prompt may take all but one
        train_keys.update(dpo_keys(recipe))
    return {**data_keys, **model_keys, **train_keys}


def dpo_keys(recipe: Recipe) -> dict[str, Any]:
    """method.preference in PaddleFormers' DPOTrainingArguments names. Its ``orpo`` is
    ``or`` plus the chosen answer's NLL at weight 1 with no reference, the odds-ratio term
    weighed by ``pref_loss_ratio`` (ftx's orpo beta); ``sft_loss_ratio`` is ftx's
    sft_weight."""
    p = recipe.method.preference
    keys: dict[str, Any] = {
        "loss_type": p.loss,
        "beta": p.beta,
        "label_smoothing": p.label_smoothing,
        "simpo_gamma": p.simpo_gamma,
        "pref_loss_ratio": 1.0,
        "sft_loss_ratio": p.sft_weight,
        "reference_free": p.reference_for("dpo") == "none",
    }
    if p.loss == "orpo":
        keys.update(pref_loss_ratio=p.beta, sft_loss_ratio=1.0)
    return keys


def run_finetune_args(recipe: Recipe) -> dict[str, Any]:
    """The same run as PaddleNLP 3.0's llm/run_finetune.py argument file (its own names).

    PaddleNLP trains from Paddle-format weights: convert model.path with
    `ftx convert MODEL DIR --to paddle` and pass `--model_name_or_path DIR` after the file.
    """
    if recipe.method.stage != "sft":
        raise FtxError(
            "PaddleNLP's run_finetune.py fine-tunes (sft) only",
            where="method.stage",
            fix="set method.stage to sft, or use the paddleformers.yaml of this plan",
        )
    m, d, t = recipe.method, recipe.data, recipe.train
    keys: dict[str, Any] = {
        "model_name_or_path": recipe.model.path,
        "dataset_name_or_path": PADDLENLP,
        "max_length": d.max_seq_len,
        "src_length": max(d.max_seq_len - 1, 1),  # the prompt may take all but one token
        "zero_padding": d.packing,
        **_schedule(recipe),
        **_saving(recipe, d.val_size > 0),
        **_precision(recipe),
        "tensor_parallel_degree": recipe.parallel.tp,
        "pipeline_parallel_degree": recipe.parallel.pp,
        "recompute": t.gradient_checkpointing,
        "do_train": True,
        "do_eval": d.val_size > 0,
        "output_dir": NATIVE_OUTPUT,
        "unified_checkpoint": True,
        "overwrite_output_dir": False,
    }
    if recipe.model.template != "auto":  # auto: the tokenizer's own chat template
        keys["chat_template"] = f"{PADDLENLP}/chat_template.json"
    keys.pop("amp_master_grad", None)  # PaddleFormers' name; PaddleNLP's default is right
    if recipe.parallel.zero:
        keys["sharding"] = SHARDING[recipe.parallel.zero]
        keys["sharding_parallel_degree"] = recipe.parallel.dp
    if m.finetuning == "lora":
        keys.update(
            lora=True,
            lora_rank=m.lora.rank,
            rslora=m.lora.rslora,
            lora_path=f"plan/{LORA_CONFIG.rsplit('/', 1)[0]}",
        )
    return keys


def launch_command(recipe: Recipe) -> list[str]:
    """paddle.distributed.launch with the recipe's topology; plain python for one process."""
    p = recipe.parallel
    if p.world_size == 1:
        return ["python", "-m", str(SPEC.worker), WORKER_CONFIG]
    # paddle.distributed.launch starts a script, not a module.
    worker = [f"plan/{WORKER_SCRIPT}", WORKER_CONFIG]
    command = [
        "python",
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        str(p.nproc_per_node),
    ]
    if p.nnodes > 1:
        command += [
            "--nnodes",
            str(p.nnodes),
            "--master",
            f"{var(MASTER_ADDR)}:{var(MASTER_PORT)}",
            "--rank",
            var(NODE_RANK),
        ]
    return [*command, "--log_dir", "logs/paddle", *worker]


def translate(recipe: Recipe, model: ModelConfig) -> NativePlan:
    """The paddle plan of a recipe (with its backends.paddle section applied)."""
    files = {}
    if recipe.method.stage in PADDLEFORMERS_STAGES:
        files[PADDLEFORMERS_YAML] = yaml.safe_dump(paddleformers_config(recipe), sort_keys=False)
    if recipe.method.stage == "sft":
        files[RUN_FINETUNE_JSON] = json.dumps(run_finetune_args(recipe), indent=2) + "\n"
    if recipe.method.finetuning == "lora":
        files[LORA_CONFIG] = json.dumps(lora_config(recipe), indent=2) + "\n"
    if recipe.parallel.world_size > 1:
        files[WORKER_SCRIPT] = (
            f"# The {SPEC.worker} module as a script, for paddle.distributed.launch.\n"
            f'import runpy\n\nrunpy.run_module("{SPEC.worker}", run_name="__main__")\n'
        )
    return NativePlan(
        backend=SPEC.name,
        worker_config=worker_config(recipe, SPEC.name),
        files=files,
        command=launch_command(recipe),
        nodes=NodeContract.plan_of(recipe.parallel) if recipe.parallel.nnodes > 1 else None,
        env={"TOKENIZERS_PARALLELISM": "false"},
        notes=plan_notes(recipe),
    )


def plan_notes(recipe: Recipe) -> tuple[str, ...]:
    """What the plan's native files cannot say: PaddleFormers has no stage for kto or rm;
    what its DPO trainer needs that a CPU run does not have."""
    stage = recipe.method.stage
    if stage == "dpo":
        return (
            "method.stage dpo: paddleformers.yaml has stage DPO with method.preference in"
            " PaddleFormers' names (loss_type, beta, label_smoothing, simpo_gamma,"
            " pref_loss_ratio, sft_loss_ratio, reference_free) and data/messages holds the"
            " pairs as its DPO rows (chosen_response, rejected_response). PaddleFormers"
            " tokenises and truncates them itself (max_prompt_len), and its sft_loss_ratio"
            " averages the chosen NLL over every chosen token of the batch where ftx's"
            " sft_weight averages each pair's; ftx's paddle worker trains this recipe as the"
            " other backends do, and with train.trainer native it runs PaddleFormers'"
            " DPOTrainer on ftx's pairs. Run bare, in one process PaddleFormers' DPO evaluation"
            " fails (it wraps the reference with fleet.distributed_model): pass do_eval=false,"
            " or launch two workers; full fine-tuning DPO needs two workers (under ftx one"
            " process keeps the reference undistributed).",
        )
    if stage in PADDLEFORMERS_STAGES:
        return ()
    if stage == "rm":
        return (
            "method.stage rm: PaddleFormers 1.2 has no reward-model stage and no Llama"
            " sequence classifier, so this plan has no paddleformers.yaml; ftx's paddle"
            " worker trains PaddleFormers' causal LM with a score head beside it (zero at"
            " first, on the last hidden state at each row's last token) and writes OUT/final"
            " as transformers' LlamaForSequenceClassification (the head also as"
            " score.safetensors beside Paddle's own files).",
        )
    return (
        f"method.stage {stage}: PaddleFormers 1.2 trains SFT, PT and DPO (its kto_pair loss"
        " is a DPO loss over chosen/rejected pairs, not KTO over answers judged one by one),"
        " so this plan has no paddleformers.yaml; ftx's paddle worker trains"
        f" {stage} with PaddleFormers' model on Paddle.",
    )
