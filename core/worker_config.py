"""The worker config of a recipe: the one translation every backend shares.

A backend's translator calls :func:`worker_config` and adds its native files; the
worker reads the result back with :meth:`ftx.core.contract.WorkerConfig.read`.
"""

from __future__ import annotations

from ftx.core.contract import (
    CONTRACT_VERSION,
    DATA_DIR,
    DataArgs,
    EvaluateArgs,
    LoraArgs,
    MethodArgs,
    ModelArgs,
    OutputArgs,
    PreferenceArgs,
    QuantizationArgs,
    TrainArgs,
    WorkerConfig,
)
from ftx.core.recipe.schema import PREFERENCE_STAGES, Recipe


def preference_args(recipe: Recipe) -> PreferenceArgs | None:
    """method.preference for the preference stages (None for sft and pt)."""
    m = recipe.method
    if m.stage not in PREFERENCE_STAGES:
        return None
    p = m.preference
    return PreferenceArgs(
        loss=p.loss,
        beta=p.beta,
        label_smoothing=p.label_smoothing,
        simpo_gamma=p.simpo_gamma,
        sft_weight=p.sft_weight,
        reference=p.reference_for(m.stage),
        desirable_weight=p.desirable_weight,
        undesirable_weight=p.undesirable_weight,
    )


def worker_config(recipe: Recipe, backend: str) -> WorkerConfig:
    """Everything a backend's worker needs, in the recipe's terms (the Adam settings from
    the recipe's ``backends.<backend>`` section, where the backend honours them)."""
    t, m, native = recipe.train, recipe.method, recipe.backends.get(backend, {})
    # ftx.core.capabilities.choose_trainer resolves `auto` before any translator runs.
    assert t.trainer != "auto", "train.trainer is resolved before translation"
    lora = m.lora
    return WorkerConfig(
        version=CONTRACT_VERSION,
        backend=backend,
        model=ModelArgs(
            path=recipe.model.path,
            dtype=recipe.model.dtype if recipe.model.dtype != "auto" else "float32",
            trust_remote_code=recipe.model.trust_remote_code,
            template=recipe.model.template,
        ),
        method=MethodArgs(
            stage=m.stage,
            finetuning=m.finetuning,
            lora=(
                LoraArgs(
                    rank=lora.rank,
                    alpha=lora.alpha,
                    dropout=lora.dropout,
                    targets=None if lora.targets == "all" else tuple(lora.targets),
                    rslora=lora.rslora,
                    dora=lora.dora,
                )
                if m.finetuning in ("lora", "qlora")
                else None
            ),
            quantization=(
                QuantizationArgs(
                    m.quantization.bits, m.quantization.type, m.quantization.double_quant
                )
                if m.finetuning == "qlora"
                else None
            ),
            freeze_trainable_layers=m.freeze.trainable_layers if m.finetuning == "freeze" else None,
            prefix_tokens=m.prefix.num_tokens if m.finetuning == "prefix" else None,
            preference=preference_args(recipe),
        ),
        train=TrainArgs(
            epochs=t.num_epochs,
            max_steps=t.max_steps,
            learning_rate=t.learning_rate,
            scheduler=t.scheduler,
            warmup_steps=t.warmup_steps,
            warmup_ratio=t.warmup_ratio or 0.0,
            micro_batch_size=t.micro_batch_size,
            grad_accum=t.grad_accum,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            adam_beta1=native.get("adam_beta1", 0.9),
            adam_beta2=native.get("adam_beta2", 0.999),
            adam_epsilon=native.get("adam_epsilon", 1e-8),
            precision=t.precision,
            gradient_checkpointing=t.gradient_checkpointing,
            seed=t.seed,
            data_seed=recipe.data.seed,
            logging_steps=t.logging_steps,
            save_steps=t.save_steps,
            save_total_limit=t.save_total_limit,
            eval_steps=t.eval_steps,
            resume=t.resume or None,
            trainer=t.trainer,
        ),
        data=DataArgs(prepared=DATA_DIR, max_seq_len=recipe.data.max_seq_len),
        evaluate=(
            EvaluateArgs(recipe.evaluate.max_new_tokens, recipe.evaluate.before_training)
            if recipe.evaluate
            else None
        ),
        output=OutputArgs(
            save_format=recipe.output.save_format,
            merge_lora=recipe.output.merge_lora,
            report_to=recipe.output.report_to,
        ),
    )
