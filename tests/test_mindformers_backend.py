"""The mindformers backend for real, beyond the backend suite (tests/test_backend_suite.py):
MindFormers 1.9.0 on MindSpore 2.9.0 (CPU), its own config checks and loaders on ftx's
plans and exports, LoRA on a tiny Qwen2, msrun plans, the MCore path for Qwen3, and what
it cannot express."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env
from training import Runs, losses, pairs_recipe, recipe, train

# Same weights, same batches, fp32: the frameworks differ only in summation order.
TOLERANCE = 1e-4

pytestmark = pytest.mark.env

MINDFORMERS_CHECKS = """
import copy, json, sys
from mindformers import MindFormerConfig
from mindformers.tools.logger import logger
from mindformers.tools.register.template import ConfigTemplate
checked = {}
for path in sys.argv[1:]:
    config = MindFormerConfig(path)
    raw = copy.deepcopy(config.to_dict())
    warnings = []
    original = logger.warning
    logger.warning = lambda msg, *a, **k: warnings.append(str(msg))
    try:
        ConfigTemplate.apply_template(raw)  # raises on keys a section does not know
    finally:
        logger.warning = original
    checked[path] = {
        "useless": [w for w in warnings if "useless" in w or "unexpected" in w],
        "sections": sorted(raw),
        "run_mode": raw["run_mode"],
    }
print(json.dumps(checked))
"""

BUILD_FROM_PLAN = """
import json, sys
import numpy as np
from pathlib import Path
from ftx.backends.mindformers.modeling import build_model, cpu_profile, load_hf_weights
from mindformers import MindFormerConfig
from mindformers.dataset import CausalLanguageModelDataset
out = Path(sys.argv[1])
config = MindFormerConfig(str(out / "plan/finetune.yaml"))
cpu_profile(config)
net = build_model(config)
load_hf_weights(net, Path(config.load_checkpoint), config)
import os
os.chdir(out)  # the YAML's paths are relative to OUT
dataset = CausalLanguageModelDataset(config.train_dataset_task.dataset_config)
batch = next(dataset.create_dict_iterator(output_numpy=True))
print(json.dumps({
    "network": type(net).__name__,
    "trainable": len(net.trainable_params()),
    "batches": dataset.get_dataset_size(),
    "shape": list(batch["input_ids"].shape),
    "labels_masked": int((batch["labels"] == -100).sum()),
}))
"""


def plan(path: Path, out: Path, *overrides: str) -> Path:
    result = run_ftx("plan", str(path), "--backend", "mindformers", "--out", str(out), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_yaml_passes_mindformers_checks_and_builds(tmp_path: Path, tiny_qwen2: Path) -> None:
    lora = plan(recipe(tmp_path, tiny_qwen2), tmp_path / "lora", "method.finetuning=lora")
    shipped = sorted((ROOT / "tests/snapshots/mindformers").glob("*/finetune.yaml"))
    assert len(shipped) >= 5
    yamls = [str(lora / "plan/finetune.yaml"), *map(str, shipped)]
    checked = run_in_env("mindformers", MINDFORMERS_CHECKS, *yamls)
    for path, found in checked.items():
        assert found["useless"] == [], path
        assert found["run_mode"] == "finetune"
    assert {"train_dataset", "eval_dataset", "callbacks", "model"} <= set(
        checked[yamls[0]]["sections"]
    )
    built = run_in_env("mindformers", BUILD_FROM_PLAN, str(lora))
    assert built["network"] == "PetModel"
    layers = json.loads((tiny_qwen2 / "config.json").read_text())["num_hidden_layers"]
    assert built["trainable"] == layers * 7 * 2  # A and B on every linear layer
    assert built["shape"] == [4, 65]  # micro batch x (seq_length + 1)
    assert built["batches"] == 88 // 4 and built["labels_masked"] > 0


def test_one_worker_runs_the_worker_module_itself(runs: Runs) -> None:
    out = runs.get("mindformers")
    launch = (out / "plan/launch.sh").read_text()
    assert "-m \\\n    ftx.backends.mindformers.worker" in launch
    record = json.loads((out / "run.json").read_text())
    assert record["framework_versions"]["mindformers"] == "1.9.0"


MF_LOSS = """
import json, sys
import numpy as np
import mindspore as ms
from pathlib import Path
from ftx.backends.mindformers.modeling import build_model, cpu_profile, load_hf_weights
from mindformers import MindFormerConfig
config = MindFormerConfig(sys.argv[1])
cpu_profile(config)
net = build_model(config)
load_hf_weights(net, Path(sys.argv[2]), config)
ms.load_param_into_net(net, ms.load_checkpoint(sys.argv[3]))  # MindSpore's own .ckpt
ids = np.array([json.loads(sys.argv[4])], dtype=np.int32)
net.set_train(True)
loss = net(ms.Tensor(ids), ms.Tensor(ids), loss_mask=ms.Tensor(np.ones(ids.shape, np.float32)))
print(json.dumps({"loss": float(loss)}))
"""

HF_LOSS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
if len(sys.argv) > 3:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, sys.argv[3])
ids = torch.tensor([json.loads(sys.argv[2])])
with torch.no_grad():
    print(json.dumps({"loss": float(model(input_ids=ids, labels=ids).loss)}))
"""

# seq_length + 1 = 65 token ids (the tiny vocabularies have more than 700 tokens)
IDS = json.dumps([(7 * i + 11) % 700 + 6 for i in range(65)])


def test_the_kept_mindspore_checkpoint_gives_the_transformers_loss(
    runs: Runs, tiny_llama: Path
) -> None:
    """With save_format both, final/mindspore holds MindFormers' own .ckpt and YAML: read
    back by MindFormers, it gives the loss transformers gives the HF export."""
    out = runs.get("mindformers")
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    native = final / "mindspore"
    assert (native / "model.ckpt").exists() and (native / "finetune.yaml").exists()
    mf = run_in_env(
        "mindformers",
        MF_LOSS,
        str(native / "finetune.yaml"),
        str(tiny_llama),
        str(native / "model.ckpt"),
        IDS,
    )
    hf = run_in_env("torch", HF_LOSS, str(final), IDS)
    base = run_in_env("torch", HF_LOSS, str(tiny_llama), IDS)
    assert abs(hf["loss"] - mf["loss"]) <= TOLERANCE
    assert abs(hf["loss"] - base["loss"]) > 1e-4  # the export is the trained model


@pytest.mark.heavy  # Qwen2 on MindFormers in make test: test_convert's .ckpt loss check
def test_lora_on_qwen2_exports_a_peft_adapter_with_the_mindformers_loss(
    tmp_path: Path, tiny_qwen2: Path
) -> None:
    extra = (
        "method: {finetuning: lora, lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}}\n"
        "output: {save_format: both, merge_lora: true}\n"
    )
    path = recipe(tmp_path, tiny_qwen2, extra)
    text = path.read_text().replace("method: {finetuning: full}\n", "")
    path.write_text(text.replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-2"))
    out = train(path, tmp_path / "mindformers", "mindformers")
    reference = train(path, tmp_path / "torch", "torch")
    # LoRA B starts at zero everywhere: the first step is the base model's loss (q/k/v
    # biases and tied embeddings included).
    assert losses(out)[0] == pytest.approx(losses(reference)[0], rel=TOLERANCE)
    final = out / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    native = final / "mindspore"
    pet = json.loads((native / "pet_config.json").read_text())
    assert pet["target_modules"] == ".*wq|.*wv" and pet["lora_rank"] == 4
    mf = run_in_env(
        "mindformers",
        MF_LOSS,
        str(native / "finetune.yaml"),
        str(tiny_qwen2),
        str(native / "adapter_model.ckpt"),
        IDS,
    )
    peft = run_in_env("torch", HF_LOSS, str(tiny_qwen2), IDS, str(final))
    base = run_in_env("torch", HF_LOSS, str(tiny_qwen2), IDS)
    merged = run_in_env("torch", HF_LOSS, str(final / "merged"), IDS)
    assert abs(peft["loss"] - base["loss"]) > 1e-3  # the adapter learned something (10x tol.)
    assert abs(peft["loss"] - mf["loss"]) <= TOLERANCE
    assert abs(merged["loss"] - peft["loss"]) <= TOLERANCE


def test_data_parallel_and_multi_node_plans_use_msrun(tmp_path: Path, tiny_llama: Path) -> None:
    """What launch.sh and finetune.yaml say to msrun and MindFormers (the backend suite
    trains both)."""
    path = recipe(tmp_path, tiny_llama)
    out = plan(path, tmp_path / "dp", "parallel.nproc_per_node=2", "train.micro_batch_size=2")
    launch = (out / "plan/launch.sh").read_text()
    assert "exec msrun" in launch and "--worker_num \\\n    2" in launch
    assert "mindformers_worker.py" in launch
    assert (out / "plan/mindformers_worker.py").exists()
    yaml_text = (out / "plan/finetune.yaml").read_text()
    assert "data_parallel: 2" in yaml_text and "use_parallel: true" in yaml_text
    nodes = plan(path, tmp_path / "nodes", "parallel.nnodes=2", "parallel.master_addr=127.0.0.1")
    assert '--node_rank \\\n    "${FTX_NODE_RANK}"' in (nodes / "plan/launch.sh").read_text()


def test_what_mindformers_cannot_run_is_refused_with_the_key(
    tmp_path: Path, tiny_llama: Path
) -> None:
    path = recipe(tmp_path, tiny_llama)
    bf16 = run_ftx("validate", str(path), "--backend", "mindformers", "train.precision=bf16")
    assert bf16.returncode == 0 and "finetune.yaml" in bf16.stderr  # valid; a note on the CPU
    out = plan(path, tmp_path / "p", "train.precision=bf16", "parallel.zero=1")
    text = (out / "plan/finetune.yaml").read_text()
    assert "compute_dtype: bfloat16" in text and "enable_parallel_optimizer: true" in text
    # (the backend suite checks every capability; these are MindFormers' own limits)
    epochs = run_ftx("validate", str(path), "--backend", "mindformers", "train.epochs=1.5",
                     "train.max_steps=null")  # fmt: skip
    assert epochs.returncode == 2 and "train.epochs" in epochs.stderr, epochs.stderr
    dora = run_ftx(
        "validate", str(path), "--backend", "mindformers", "method.finetuning=lora",
        "method.lora.dora=true",
    )  # fmt: skip
    assert dora.returncode == 2 and "method.lora.dora" in dora.stderr


READ_MCORE_DATA = """
import json, os, sys
from mindformers import MindFormerConfig
from mindformers.dataset import CausalLanguageModelDataset
from ftx.backends.mindformers.modeling import cpu_profile
config = MindFormerConfig(sys.argv[1] + "/plan/finetune.yaml")
cpu_profile(config)  # no more data workers than CPUs
os.chdir(sys.argv[1])  # the YAML's paths are relative to OUT
dataset = CausalLanguageModelDataset(config.train_dataset_task.dataset_config)
batch = next(dataset.create_dict_iterator(output_numpy=True))
print(json.dumps({"size": dataset.get_dataset_size(),
                  **{k: v.tolist() for k, v in batch.items()}}))
"""


def test_qwen3_plans_the_mcore_path_and_run_refuses_it(tmp_path: Path, tiny_qwen2: Path) -> None:
    model = tmp_path / "tiny-qwen3"  # Qwen2's weights and tokenizer under a Qwen3 config
    shutil.copytree(tiny_qwen2, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], attention_bias=False)
    (model / "config.json").write_text(json.dumps(config))
    path = recipe(tmp_path, model)
    out = plan(path, tmp_path / "q3")
    text = (out / "plan/finetune.yaml").read_text()
    assert "use_legacy: false" in text and f"pretrained_model_dir: {model}" in text
    assert "type: HFDataLoader" in text and "pet_config" not in text
    checked = run_in_env("mindformers", MINDFORMERS_CHECKS, str(out / "plan/finetune.yaml"))
    assert next(iter(checked.values()))["useless"] == []
    found = run_in_env("mindformers", READ_MCORE_DATA, str(out))
    assert found["size"] == 88 // 4 and len(found["input_ids"]) == 4
    rows = [json.loads(line) for line in (out / "plan/data/mcore/train.jsonl").open()]
    first = rows[0]
    assert len(first["input_ids"]) == len(first["labels"]) == 64
    learned = [i for i, m in enumerate(first["loss_mask"]) if m]
    assert learned and all(first["labels"][i] == first["input_ids"][i + 1] for i in learned)
    refused = run_ftx("run", str(path), "--backend", "mindformers", "--out", str(tmp_path / "r"))
    # auto picks MindFormers' Trainer for the MCore path, which needs an NPU
    assert refused.returncode == 2 and "model.path: 'qwen3'" in refused.stderr
    assert "GPU/NPU only" in refused.stderr and "MindFormers' Trainer" in refused.stderr
    ftx = run_ftx("validate", str(path), "--backend", "mindformers", "train.trainer=ftx")
    assert ftx.returncode == 2 and "a qwen3 model is trained by MindFormers' Trainer" in ftx.stderr
    lora = run_ftx("plan", str(path), "--backend", "mindformers", "--out", str(tmp_path / "l"),
                   "method.finetuning=lora")  # fmt: skip
    assert lora.returncode == 2 and "has no LoRA" in lora.stderr


def test_a_dpo_plan_says_mindformers_has_no_dpo_trainer(tmp_path: Path, tiny_llama: Path) -> None:
    """MindFormers 1.9 trains sft and pt only: the plan says so (NOTES.md, printed by
    `ftx plan`), writes no MindRecord for a trainer that cannot read pairs, and ftx's
    worker trains the stage (the backend suite checks its numbers)."""
    path = pairs_recipe(tmp_path, tiny_llama)
    result = run_ftx("plan", str(path), "--backend", "mindformers", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    notes = (tmp_path / "o/plan/NOTES.md").read_text()
    assert "MindFormers 1.9 has no dpo trainer" in notes and "MindRLHF" in notes
    assert "MindFormers 1.9 has no dpo trainer" in result.stderr
    assert not list((tmp_path / "o/plan/data").glob("*.mindrecord"))
    (tmp_path / "sft").mkdir()
    sft = plan(recipe(tmp_path / "sft", tiny_llama), tmp_path / "sft-out")
    assert not (sft / "plan/NOTES.md").exists()
