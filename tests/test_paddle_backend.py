"""The paddle backend for real, beyond the backend suite (tests/test_backend_suite.py):
PaddleFormers 1.2 on paddlepaddle 3.3.1 (CPU) reading ftx's exports and plans, its own CLI
on the emitted plan, its templates, recomputation, and what it cannot express."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_ftx, run_in_env
from training import Runs, feedback_recipe, pairs_recipe, recipe

# Same weights, same batches, fp32: the frameworks differ only in summation order.
TOLERANCE = 1e-4

pytestmark = pytest.mark.env


HF_LOGITS = """
import json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor([json.loads(sys.argv[2])])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
if len(sys.argv) > 4:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, sys.argv[4])
with torch.no_grad():
    np.save(sys.argv[3], model(ids).logits.numpy())
print(json.dumps({"ok": True}))
"""

PADDLE_LOGITS = """
import json, sys, numpy as np, paddle
from paddleformers.transformers import AutoConfig, AutoModelForCausalLM
path = sys.argv[1]
config = AutoConfig.from_pretrained(path, dtype="float32")
config.fuse_rms_norm = False
config._attn_implementation = "eager"
model = AutoModelForCausalLM.from_pretrained(path, config=config, convert_from_hf=True,
                                             dtype="float32", load_checkpoint_format="safetensors")
from ftx.backends.paddle.modeling import keep_pad_embedding
keep_pad_embedding(model)  # as the worker does: the pad token (id 5 here) is a real token
if len(sys.argv) > 4:
    from paddleformers.peft import LoRAModel
    model = LoRAModel.from_pretrained(model, sys.argv[4], load_checkpoint_format="safetensors")
model.eval()
with paddle.no_grad():
    logits = model(paddle.to_tensor([json.loads(sys.argv[2])]), return_dict=True).logits
np.save(sys.argv[3], logits.numpy())
print(json.dumps({"ok": True}))
"""

IDS = json.dumps([1, 17, 23, 42, 99, 7, 5, 64, 33, 2, 11, 12])


def logits(env: str, model: Path, out: Path, adapter: Path | None = None) -> object:
    import numpy as np

    code = HF_LOGITS if env == "torch" else PADDLE_LOGITS
    extra = [str(adapter)] if adapter else []
    run_in_env(env, code, str(model), IDS, str(out), *extra)
    return np.load(out)


def test_paddleformers_reads_the_full_export_with_the_transformers_logits(
    runs: Runs, tmp_path: Path
) -> None:
    """OUT/final (a full model) loads in PaddleFormers and in transformers with the same
    logits (the backend suite checks transformers' loss against the run's)."""
    final = runs.get("paddle") / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    in_paddle = logits("paddle", final, tmp_path / "p.npy")
    in_torch = logits("torch", final, tmp_path / "t.npy")
    assert abs(in_paddle - in_torch).max() <= TOLERANCE
    record = json.loads((runs.get("paddle") / "run.json").read_text())
    assert record["framework_versions"]["paddleformers"] == "1.2.0"


def test_the_kept_paddleformers_adapter_gives_the_peft_logits(
    runs: Runs, tmp_path: Path, tiny_llama: Path
) -> None:
    """With save_format both, final/paddle is PaddleFormers' own adapter (the PEFT one in
    final is converted from it by ftx): PaddleFormers loads it with peft's logits."""
    final = runs.get("paddle", "lora") / "final"
    assert (final / "paddle/lora_config.json").exists()
    peft = logits("torch", tiny_llama, tmp_path / "peft.npy", adapter=final)
    paddle = logits("paddle", tiny_llama, tmp_path / "pd.npy", adapter=final / "paddle")
    assert abs(peft - paddle).max() <= TOLERANCE


def test_data_parallel_and_multi_node_plans_use_paddles_launcher(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """What launch.sh hands paddle.distributed.launch (the backend suite trains both)."""
    path = recipe(tmp_path, tiny_llama)
    dp = tmp_path / "dp"
    plan = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(dp),
                   "parallel.nproc_per_node=2")  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    launch = (dp / "plan/launch.sh").read_text()
    assert "paddle.distributed.launch" in launch and "--nproc_per_node \\\n    2" in launch
    nodes = tmp_path / "nodes"
    plan = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(nodes),
                   "parallel.nnodes=2", "parallel.master_addr=127.0.0.1")  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    launch = (nodes / "plan/launch.sh").read_text()
    assert "--nnodes \\\n    2" in launch and '--rank \\\n    "${FTX_NODE_RANK}"' in launch


RECOMPUTED_LAYERS = """
import json, sys, numpy as np, paddle
from pathlib import Path
from paddleformers.transformers.llama import modeling as llama
from ftx.backends.paddle.modeling import load_model
from ftx.core.contract import RunLayout, WorkerConfig
calls = []
original = llama.LlamaModel.recompute_training
def counted(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)
llama.LlamaModel.recompute_training = counted  # count, then run the real thing
path = Path(sys.argv[1])
model = load_model(WorkerConfig.read(path), RunLayout.of_worker_config(path), 0, packed=False)
ids = paddle.to_tensor([[1, 17, 23, 42, 99, 7]])
model(ids, return_dict=True).logits.sum().backward()
print(json.dumps({"recomputed": len(calls)}))
"""


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_recomputes_every_layer(
    method: str, tmp_path: Path, tiny_llama: Path
) -> None:
    path = recipe(tmp_path, tiny_llama)
    out = tmp_path / "out"
    lora = ["method.finetuning=lora"] if method == "lora" else []
    plan = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(out),
                   "train.gradient_checkpointing=true", *lora)  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    found = run_in_env("paddle", RECOMPUTED_LAYERS, str(out / "plan/worker.json"))
    layers = json.loads((tiny_llama / "config.json").read_text())["num_hidden_layers"]
    assert found["recomputed"] == layers


CPU_OVERRIDES = ["device=cpu", "_attn_implementation=eager"]


def cpu_model(tmp_path: Path, tiny_llama: Path) -> Path:
    """The tiny Llama with ``fuse_rms_norm: false`` (PaddleFormers' fused kernel is GPU-only)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "fuse_rms_norm": False}))
    return model


def paddleformers_cli_train(path: Path, out: Path, *overrides: str) -> str:
    """`ftx plan` of ``path`` into ``out``, then `paddleformers-cli train` of its YAML (no
    ftx), on CPU, with the CLI's ``overrides``; the worker's log."""
    plan = run_ftx(
        "plan", str(path), "--backend", "paddle", "--out", str(out), "train.grad_accum=1"
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    from ftx.core import envs

    env = envs.process_env("paddle")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    envs.ensure("paddle")
    result = subprocess.run(
        ["paddleformers-cli", "train", "plan/paddleformers.yaml", *CPU_OVERRIDES, *overrides],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "paddleformers_dist_log/workerlog.0").read_text(errors="replace")
    assert result.returncode == 0, log[-3000:]
    return log


def test_paddleformers_cli_trains_the_emitted_plan(tmp_path: Path, tiny_llama: Path) -> None:
    """The plan runs with `paddleformers-cli train` and no ftx. On CPU it needs what a CPU
    needs anyway: a device list for the launcher (the CLI assumes GPUs), `device=cpu`,
    eager attention, the model's `fuse_rms_norm: false`, and gradient_accumulation_steps 1
    (PaddleFormers' trainer calls the GPU-only paddle.device.synchronize() otherwise)."""
    out = tmp_path / "out"
    log = paddleformers_cli_train(recipe(tmp_path, cpu_model(tmp_path, tiny_llama), steps=3), out)
    assert "global_step: 3" in log and "eval_loss" in log
    assert (out / "native/model-00001-of-00001.safetensors").exists()


def test_paddleformers_cli_trains_the_dpo_plan(tmp_path: Path, tiny_llama: Path) -> None:
    """stage: DPO with the recipe's preference keys in PaddleFormers' names and the pairs
    as its DPO messages rows (chosen_response, rejected_response), trained by
    `paddleformers-cli train` (LoRA, one process): its first loss is ln 2, as ftx's.
    PaddleFormers' DPO evaluation wraps its reference with fleet.distributed_model, which
    fails in one process that fleet never initialised: this run trains without it."""
    import yaml

    path = pairs_recipe(tmp_path, cpu_model(tmp_path, tiny_llama), steps=3)
    path.write_text(path.read_text() + "method: {stage: dpo, finetuning: lora, preference:"
                    " {beta: 0.2, label_smoothing: 0.1}}\n")  # fmt: skip
    path.write_text(path.read_text().replace("method: {stage: dpo, finetuning: lora}\n", ""))
    out = tmp_path / "out"
    path.write_text(path.read_text().replace(", eval_steps: 2", ""))
    log = paddleformers_cli_train(path, out, "do_eval=false")
    config = yaml.safe_load((out / "plan/paddleformers.yaml").read_text())
    assert config["stage"] == "DPO" and config["loss_type"] == "sigmoid"
    assert config["beta"] == 0.2 and config["label_smoothing"] == 0.1
    assert config["reference_free"] is False and config["sft_loss_ratio"] == 0.0
    first = json.loads((out / "plan/data/messages/train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"messages", "chosen_response", "rejected_response"}
    assert "stage DPO" in (out / "plan/NOTES.md").read_text()
    assert "global_step: 3" in log
    losses = [float(m) for m in re.findall(r"\bloss: ([0-9.]+)", log)]
    assert losses and losses[0] == pytest.approx(0.693147, abs=1e-5), log[-3000:]


def test_what_paddleformers_cannot_express_is_refused_with_the_key(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """(The backend suite checks every capability; these keys are the translator's.)"""
    path = recipe(tmp_path, tiny_llama)
    dora = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(tmp_path / "d"),
                   "method.finetuning=lora", "method.lora.dora=true")  # fmt: skip
    assert dora.returncode == 2 and "method.lora.dora" in dora.stderr
    assert not (tmp_path / "d").exists()
    board = run_ftx("validate", str(path), "--backend", "paddle", "output.report_to=tensorboard")
    assert board.returncode == 2 and "output.report_to" in board.stderr
    zero = run_ftx("validate", str(path), "--backend", "paddle", "parallel.zero=1")
    # valid for paddle (its own trainer shards on a GPU); this CPU-only machine is noted
    assert zero.returncode == 0 and "would refuse it" in zero.stderr, zero.stderr
    assert "paddleformers-cli train" in zero.stderr


def test_qwen2_on_cpu_is_refused_clearly(tmp_path: Path, tiny_qwen2: Path) -> None:
    result = run_ftx(
        "run",
        str(recipe(tmp_path, tiny_qwen2)),
        "--backend",
        "paddle",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode != 0
    assert "PaddleFleet" in result.stderr and "Llama-architecture" in result.stderr
    assert not os.path.exists(tmp_path / "out/final")


PADDLEFORMERS_TEMPLATE = """
import json, runpy, sys
from pathlib import Path
runpy.run_path(sys.argv[1])  # the plan's custom_register_path, as PaddleFormers loads it
from paddleformers.datasets.template.template import TEMPLATES
from paddleformers.transformers import AutoTokenizer
template = TEMPLATES[sys.argv[2]]
tokenizer = AutoTokenizer.from_pretrained(sys.argv[3])
texts, learned = [], []
for line in Path(sys.argv[4]).read_text().splitlines()[:5]:
    messages = json.loads(line)["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = [m for m in messages if m["role"] != "system"]
    pairs = template.encode_multiturn(tokenizer, turns, system)
    ids = [i for source, target in pairs for i in source + target]
    ids += tokenizer.convert_tokens_to_ids(tokenizer.tokenize(template.suffix[-1]))
    texts.append(tokenizer.decode(ids))
    learned.append([tokenizer.decode(target) for _, target in pairs])
print(json.dumps({"texts": texts, "learned": learned, "suffix": template.suffix[-1]}))
"""


@pytest.mark.parametrize("template", ["llama3", "qwen2_5"])
def test_the_plans_template_module_renders_ftx_template_in_paddleformers(
    template: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """PaddleFormers, given the plan's ftx_template.py, writes the conversations of the
    plan's messages file as ftx's template does: the same text, and the answers (plus the
    end-of-turn PaddleFormers adds as its suffix) as the learned parts."""
    from ftx.core.data.templates import render_named

    path = recipe(tmp_path, tiny_llama)
    path.write_text(
        path.read_text().replace(
            f"model: {{path: {tiny_llama}}}", f"model: {{path: {tiny_llama}, template: {template}}}"
        )
    )
    out = tmp_path / "out"
    plan = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(out))
    assert plan.returncode == 0, plan.stderr[-2000:]
    config = (out / "plan/paddleformers.yaml").read_text()
    assert f"template: ftx_{template}" in config and "custom_register_path" in config
    messages = out / "plan/data/messages/train.jsonl"
    found = run_in_env(
        "paddle", PADDLEFORMERS_TEMPLATE, str(out / "plan/data/ftx_template.py"),
        f"ftx_{template}", str(tiny_llama), str(messages),
    )  # fmt: skip
    tokenizer = json.loads((tiny_llama / "tokenizer_config.json").read_text())
    bos, eos = tokenizer.get("bos_token") or "", tokenizer.get("eos_token") or ""
    for line, text, learned in zip(
        messages.read_text().splitlines(), found["texts"], found["learned"], strict=False
    ):
        expected, spans = render_named(template, json.loads(line)["messages"], bos=bos, eos=eos)
        assert text == expected
        # PaddleFormers learns each answer with its end-of-turn (chat_sep, or the suffix it
        # appends after the last one): ftx's learned spans, in order.
        answers = "".join(expected[start:end] for start, end in spans)
        assert "".join(learned) + found["suffix"] == answers


def test_a_kto_plan_says_paddleformers_has_no_kto_stage(tmp_path: Path, tiny_llama: Path) -> None:
    """PaddleFormers dispatches SFT, PT and DPO: a kto plan writes no paddleformers.yaml
    (a DPO or SFT file would train something else) and says why; ftx's worker trains it."""
    path = feedback_recipe(tmp_path, tiny_llama)
    out = tmp_path / "o"
    result = run_ftx("plan", str(path), "--backend", "paddle", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert not (out / "plan/paddleformers.yaml").exists()
    notes = (out / "plan/NOTES.md").read_text()
    assert "PaddleFormers 1.2 trains SFT, PT and DPO" in notes and "kto_pair" in notes
    assert "PaddleFormers 1.2 trains SFT, PT and DPO" in result.stderr
    assert json.loads((out / "plan/worker.json").read_text())["method"]["stage"] == "kto"
