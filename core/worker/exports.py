"""OUT/final, the same flow for every backend.

- full fine-tuning: the framework's Hugging Face weights (``save_model``)
- LoRA: the PEFT adapter, written by the framework (torch) or converted by ftx from the
  framework's own adapter (``adapter_format`` native: PaddleFormers', MindFormers')
- ``output.save_format both``: the framework's own files too, in final/<native_name>;
  ``native``: only those, in final itself
- ``output.merge_lora``: final/merged, by the framework's own merge where it has one, else
  ftx's fp32 merge of the PEFT adapter into the base
- stage rm, where the framework trains the score head beside its causal LM
  (``score_head``): the HF weights or PEFT adapter made transformers'
  ``*ForSequenceClassification`` (:mod:`ftx.core.convert.reward_model`), the head as
  score.safetensors beside the framework's own files
- the tokenizer and generation files of the base beside every model folder
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.convert.layout import copy_side_files
from ftx.core.convert.reward_model import (
    add_score_to_adapter,
    write_native_score,
    write_reward_model,
)
from ftx.core.prepared import read_manifest
from ftx.core.worker.checkpoints import staged_on_every_rank
from ftx.core.worker.framework import Framework, Rank

ADAPTER_STAGE = ".native-adapter"  # the framework's adapter, while it is converted


def write_final(layout: RunLayout, rank: Rank, framework: Framework, config: WorkerConfig) -> None:
    """OUT/final, written on every rank into a staged folder renamed into place."""
    pad_id = int(read_manifest(layout.at(config.data.prepared))["pad_token_id"])
    staged_on_every_rank(
        layout.final, rank, lambda folder: export(folder, rank, framework, config, pad_id)
    )


def export(
    folder: Path, rank: Rank, framework: Framework, config: WorkerConfig, pad_id: int
) -> None:
    """Fill the staged final ``folder`` (called on every rank); ``pad_id`` is the prepared
    data's, which a reward model's config needs."""
    source = Path(config.model.path)
    adapter = config.method.finetuning in ("lora", "qlora")
    fmt = config.output.save_format if framework.native_name else "hf"
    score = framework.score_head() if config.method.stage == "rm" else None
    native = None
    if fmt != "hf":
        native = folder if fmt == "native" else folder / str(framework.native_name)
        framework.save_native(native)
        rank.barrier()
        if rank.main:
            copy_side_files(source, native)
            if score is not None:
                write_native_score(native, score)
    if fmt == "native":
        return
    if adapter and framework.adapter_format == "native":
        staged = native or folder / ADAPTER_STAGE
        if native is None:
            framework.save_native(staged)
            rank.barrier()
        if rank.main:
            peft_from_native(staged, folder, source)
            if native is None:
                shutil.rmtree(staged)
    else:
        framework.save_model(folder)
    rank.barrier()
    if not rank.main:
        return
    if score is not None and adapter:
        add_score_to_adapter(folder, score)
    elif score is not None:
        write_reward_model(folder, score, pad_id)
    copy_side_files(source, folder)
    if adapter and config.output.merge_lora:
        merged = folder / "merged"
        if not framework.save_merged(merged):
            merge_with_ftx(source, folder, merged, pad_id)
        copy_side_files(source, merged)


def peft_from_native(native: Path, folder: Path, base: Path) -> None:
    """The framework's adapter in ``native`` as a PEFT adapter in ``folder``, naming
    ``base`` as its base model."""
    from ftx.core.convert.adapters import convert_adapter

    converted = folder / ".peft"
    # The framework wrote the adapter a moment ago in this run (on CPU PaddleFormers writes
    # a pickle), so reading it back is safe.
    convert_adapter(native, converted, "hf", trust_pickle=True)
    for item in converted.iterdir():
        item.replace(folder / item.name)
    converted.rmdir()
    path = folder / "adapter_config.json"
    settings = json.loads(path.read_text())
    settings["base_model_name_or_path"] = str(base)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def merge_with_ftx(base: Path, adapter: Path, merged: Path, pad_id: int) -> None:
    """ftx's fp32 merge of the PEFT adapter in ``adapter`` into ``base``, as ``merged``
    (written beside the adapter folder, which it reads, then moved into place)."""
    from ftx.core.convert.merge_lora import merge_lora

    beside = adapter.with_name(f"{adapter.name}.merged")
    merge_lora(base, adapter, beside, force=True, pad_token_id=pad_id)
    beside.replace(merged)
