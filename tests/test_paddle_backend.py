"""The paddle backend for real: PaddleFormers 1.2 on paddlepaddle 3.3.1 (CPU), tiny Llama
models, paddle.distributed.launch with gloo, outputs loaded by transformers and peft."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_ftx, run_in_env
from training import (
    assert_one_plan_for_both_nodes,
    interrupted_run,
    losses,
    recipe,
    rows,
    train,
    two_local_nodes,
)

# Same weights, same batches, fp32: the frameworks differ only in summation order.
TOLERANCE = 1e-4

pytestmark = pytest.mark.env


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("full")
    path = recipe(tmp, tiny_llama)
    return {b: train(path, tmp / b, b) for b in ("torch", "paddle")}


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


def test_full_finetuning_matches_torch_step_for_step(full_runs: dict[str, Path]) -> None:
    torch_rows, paddle_rows = rows(full_runs["torch"]), rows(full_runs["paddle"])
    first_t, first_p = torch_rows[0]["loss"], paddle_rows[0]["loss"]
    assert abs(first_p - first_t) <= TOLERANCE * abs(first_t)
    assert losses(full_runs["paddle"]) == pytest.approx(losses(full_runs["torch"]), abs=TOLERANCE)
    for t, p in zip(torch_rows, paddle_rows, strict=True):
        assert p["step"] == t["step"] and p["tokens"] == t["tokens"]  # the same token stream
        assert p["lr"] == pytest.approx(t["lr"], rel=1e-9)
        if "grad_norm" in t:
            assert p["grad_norm"] == pytest.approx(t["grad_norm"], rel=1e-4)
        if "eval_loss" in t:
            assert p["eval_loss"] == pytest.approx(t["eval_loss"], abs=TOLERANCE)
    record = json.loads((full_runs["paddle"] / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["framework_versions"]["paddleformers"] == "1.2.0"


def test_full_export_loads_in_transformers_with_the_paddle_logits(
    full_runs: dict[str, Path], tmp_path: Path
) -> None:
    final = full_runs["paddle"] / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    in_paddle = logits("paddle", final, tmp_path / "p.npy")
    in_torch = logits("torch", final, tmp_path / "t.npy")
    assert abs(in_paddle - in_torch).max() <= TOLERANCE
    # and the torch backend, trained on the same batches, ends at the same model
    torch_final = logits("torch", full_runs["torch"] / "final", tmp_path / "tt.npy")
    assert abs(torch_final - in_torch).max() <= 1e-3


def test_lora_with_packing_exports_a_peft_adapter_and_a_merged_model(
    tmp_path: Path, tiny_llama: Path
) -> None:
    extra = (
        "  save_steps: 2\n"
        "method: {finetuning: lora, lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}}\n"
        "output: {save_format: both, merge_lora: true}\n"
    )
    path = recipe(tmp_path, tiny_llama, extra)
    text = path.read_text().replace("method: {finetuning: full}\n", "")
    text = text.replace("max_seq_len: 64", "max_seq_len: 64\n  packing: true")
    path.write_text(text)
    out = train(path, tmp_path / "paddle", "paddle")
    reference = train(path, tmp_path / "torch", "torch")
    # LoRA B starts at zero on both: the first step is the base model's loss.
    assert losses(out)[0] == pytest.approx(losses(reference)[0], rel=TOLERANCE)
    final = out / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (final / "paddle/lora_config.json").exists()  # PaddleFormers' own adapter kept
    peft = logits("torch", tiny_llama, tmp_path / "peft.npy", adapter=final)
    paddle = logits("paddle", tiny_llama, tmp_path / "pd.npy", adapter=final / "paddle")
    base = logits("torch", tiny_llama, tmp_path / "base.npy")
    merged = logits("torch", final / "merged", tmp_path / "merged.npy")
    assert abs(peft - base).max() > 1e-3  # the adapter learned something
    assert abs(peft - paddle).max() <= TOLERANCE
    assert abs(merged - peft).max() <= TOLERANCE


PACKED_VS_ALONE = """
import json, sys, numpy as np, paddle
from ftx.backends.paddle.modeling import collate
from ftx.core.workerkit import segment_spans
from ftx.core.prepared import load_split
from paddleformers.transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.from_pretrained(sys.argv[1], dtype="float32")
config.fuse_rms_norm = False
config._attn_implementation = "eager"
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], config=config, convert_from_hf=True,
                                             dtype="float32", load_checkpoint_format="safetensors")
model.eval()
split = load_split(__import__("pathlib").Path(sys.argv[2]), "train")
worst, examples = 0.0, 0
with paddle.no_grad():
    for index in range(3):
        batch = collate(split, [index], pad_id=0)
        packed = model(**{k: v for k, v in batch.items() if k not in ("labels", "token_mask")},
                       return_dict=True).logits.numpy()[0]
        ids, _ = split[index]
        _, segments = split.positions(index)
        for start, end in segment_spans(segments):
            alone = model(paddle.to_tensor([ids[start:end].astype("int64")]),
                          return_dict=True).logits.numpy()[0]
            worst = max(worst, float(np.abs(packed[start:end] - alone).max()))
            examples += 1
print(json.dumps({"worst": worst, "examples": examples}))
"""


def test_packed_examples_give_their_own_logits(tmp_path: Path, tiny_llama: Path) -> None:
    path = recipe(tmp_path, tiny_llama)
    path.write_text(
        path.read_text().replace("max_seq_len: 64", "max_seq_len: 256\n  packing: true")
    )
    out = tmp_path / "out"
    assert run_ftx("plan", str(path), "--backend", "paddle", "--out", str(out)).returncode == 0
    assert run_ftx("data", "prepare", str(path), "--out", str(out / "data")).returncode == 0
    found = run_in_env("paddle", PACKED_VS_ALONE, str(tiny_llama), str(out / "data"))
    assert found["examples"] > 3  # several examples per packed row
    assert found["worst"] <= 1e-5


def test_two_processes_match_one(
    full_runs: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    path = recipe(tmp_path, tiny_llama)
    out = train(
        path, tmp_path / "dp", "paddle", "parallel.nproc_per_node=2", "train.micro_batch_size=2"
    )
    launch = (out / "plan/launch.sh").read_text()
    assert "paddle.distributed.launch" in launch and "--nproc_per_node \\\n    2" in launch
    assert (out / "logs/paddle/workerlog.1").exists()  # the second rank really ran
    assert losses(out) == pytest.approx(losses(full_runs["paddle"]), abs=TOLERANCE)
    found = run_in_env(
        "paddle",
        "import json, sys; from safetensors.numpy import load_file;"
        "a = load_file(sys.argv[1]); b = load_file(sys.argv[2]);"
        "print(json.dumps({'keys': sorted(a) == sorted(b),"
        " 'diff': max(float(abs(a[k] - b[k]).max()) for k in a)}))",
        str(full_runs["paddle"] / "final/model.safetensors"),
        str(out / "final/model.safetensors"),
    )
    assert found["keys"] and found["diff"] < TOLERANCE


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


def test_two_nodes_on_localhost_train_together(
    full_runs: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    _, port = two_local_nodes(tmp_path, tiny_llama, "paddle")
    launch = assert_one_plan_for_both_nodes(tmp_path, port)
    assert "--nnodes \\\n    2" in launch and '--rank \\\n    "${FTX_NODE_RANK}"' in launch
    assert losses(tmp_path / "n0") == pytest.approx(losses(full_runs["paddle"]), abs=TOLERANCE)


def test_sigterm_saves_a_checkpoint_and_resume_continues_identically(
    tmp_path: Path, tiny_llama: Path
) -> None:
    path = recipe(tmp_path, tiny_llama, steps=30)
    reference = train(path, tmp_path / "reference", "paddle")
    out = tmp_path / "interrupted"
    interrupted_run(path, out, "paddle")
    (checkpoint,) = (out / "checkpoints").iterdir()
    assert 3 <= int(checkpoint.name.split("-")[1]) < 30
    train(path, out, "paddle", "train.resume=auto")
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)
    assert (out / "final/model.safetensors").exists()


CPU_OVERRIDES = ["device=cpu", "_attn_implementation=eager"]


def test_paddleformers_cli_trains_the_emitted_plan(tmp_path: Path, tiny_llama: Path) -> None:
    """The plan runs with `paddleformers-cli train` and no ftx. On CPU it needs what a CPU
    needs anyway: a device list for the launcher (the CLI assumes GPUs), `device=cpu`,
    eager attention, the model's `fuse_rms_norm: false`, and gradient_accumulation_steps 1
    (PaddleFormers' trainer calls the GPU-only paddle.device.synchronize() otherwise)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "fuse_rms_norm": False}))
    path = recipe(tmp_path, model, steps=3)
    out = tmp_path / "out"
    plan = run_ftx(
        "plan", str(path), "--backend", "paddle", "--out", str(out), "train.grad_accum=1"
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    from ftx.core import envs

    env = envs.process_env("paddle")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    envs.ensure("paddle")
    result = subprocess.run(
        ["paddleformers-cli", "train", "plan/paddleformers.yaml", *CPU_OVERRIDES],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "paddleformers_dist_log/workerlog.0").read_text(errors="replace")
    assert result.returncode == 0, log[-3000:]
    assert "global_step: 3" in log and "eval_loss" in log
    assert (out / "native/model-00001-of-00001.safetensors").exists()


def test_what_paddle_cannot_run_is_refused_with_the_key(tmp_path: Path, tiny_llama: Path) -> None:
    path = recipe(tmp_path, tiny_llama)
    zero = run_ftx("validate", str(path), "--backend", "paddle", "parallel.zero=1")
    assert zero.returncode == 2 and "paddleformers-cli train" in zero.stderr
    assert (
        run_ftx(
            "plan",
            str(path),
            "--backend",
            "paddle",
            "--out",
            str(tmp_path / "p"),
            "parallel.zero=1",
        ).returncode
        == 0
    )  # the native plan has it
    prefix = run_ftx("validate", str(path), "--backend", "paddle", "method.finetuning=prefix")
    assert prefix.returncode == 2 and "method.finetuning" in prefix.stderr
    dora = run_ftx(
        "plan",
        str(path),
        "--backend",
        "paddle",
        "--out",
        str(tmp_path / "d"),
        "method.finetuning=lora",
        "method.lora.dora=true",
    )
    assert dora.returncode == 2 and "method.lora.dora" in dora.stderr
    board = run_ftx("validate", str(path), "--backend", "paddle", "output.report_to=tensorboard")
    assert board.returncode == 2 and "output.report_to" in board.stderr


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
