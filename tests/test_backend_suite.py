"""The tests every backend that trains must pass, written once and run for each backend in
the registry (Ibis' ``backends/tests`` shape). A backend that lacks a capability its
test needs is skipped with the capability named, from its own ``Capabilities``.

The reference is the torch backend: the others must train it step for step. Exports are
judged by Hugging Face's own loaders (transformers, peft), and the framework interface
(:mod:`ftx.core.worker.framework`) is driven directly in each backend's environment.

Backend-specific tests stay beside this suite (tests/test_<name>_backend.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ftx, run_ftx_here, run_in_env
from ftx.core.backend import Capabilities
from ftx.core.compare import hf_environment
from ftx.core.convert.safetensors_stream import SafetensorsReader
from ftx.core.registry import backend_names, get_spec
from training import (
    Runs,
    assert_one_plan_for_both_nodes,
    capabilities,
    feedback_recipe,
    free_port,
    interrupted_run,
    losses,
    pairs_recipe,
    recipe,
    rows,
    train,
    two_local_nodes,
)

pytestmark = pytest.mark.env

REFERENCE = "torch"
BACKENDS = backend_names()
# Same weights, same batches, fp32: the frameworks differ only in summation order.
TOLERANCE = 1e-4


def needs(backend: str, *, parallel: str | None = None, finetuning: str | None = None,
          packing: bool = False, stage: str | None = None) -> None:  # fmt: skip
    """Skip unless ``backend`` declares the capability."""
    caps = capabilities(backend)
    if stage and stage not in caps.stages:
        pytest.skip(f"the {backend} backend declares no '{stage}' stage")
    if parallel and parallel not in caps.parallel:
        pytest.skip(f"the {backend} backend declares no '{parallel}' parallelism")
    if finetuning and finetuning not in caps.finetuning:
        pytest.skip(f"the {backend} backend declares no '{finetuning}' fine-tuning")
    if packing and not caps.packing:
        pytest.skip(f"the {backend} backend declares no packing")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


# --------------------------------------------------------------------------- parity


def test_full_finetuning_matches_the_reference_step_for_step(backend: str, runs: Runs) -> None:
    if backend == REFERENCE:
        pytest.skip(f"{REFERENCE} is the reference")
    reference, mine = rows(runs.get(REFERENCE)), rows(runs.get(backend))
    assert abs(mine[0]["loss"] - reference[0]["loss"]) <= TOLERANCE * reference[0]["loss"]
    assert len(mine) == len(reference)
    for t, m in zip(reference, mine, strict=True):
        assert m["step"] == t["step"] and m.get("tokens") == t.get("tokens")  # one token stream
        for key in ("loss", "eval_loss"):
            if key in t:
                assert m[key] == pytest.approx(t[key], abs=TOLERANCE), (key, t["step"])
        if "lr" in t:
            assert m["lr"] == pytest.approx(t["lr"], rel=1e-6, abs=1e-9)
            assert m["grad_norm"] == pytest.approx(t["grad_norm"], rel=1e-4)
    record = json.loads((runs.get(backend) / "run.json").read_text())
    assert record["status"] == "completed" and record["backend"] == backend


PREFERENCE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                   "rewards/margins", "logps/chosen", "logps/rejected", "kl")  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "finetuning"),
    [
        ("dpo", "lora"),
        ("dpo", "full"),
        ("kto", "lora"),
        # rm's parity: test_a_reward_model_learns_and_scores_in_transformers (make test)
        pytest.param("rm", "lora", marks=pytest.mark.heavy),
        # full fine-tuning of kto and rm: the same reference copy as dpo's (make test-full)
        pytest.param("kto", "full", marks=pytest.mark.heavy),
        pytest.param("rm", "full", marks=pytest.mark.heavy),
    ],
)
def test_preference_matches_the_reference_step_for_step(
    backend: str, runs: Runs, stage: str, finetuning: str
) -> None:
    """dpo, kto and rm: the same losses, rewards, log-probabilities (kto: KL estimates) and
    grad norms as torch's, from the same reference (the adapter off under LoRA, a frozen
    copy under full fine-tuning; scored before training where the framework keeps none;
    rm: none, its score head starts at zero beside the framework's causal LM)."""
    needs(backend, stage=stage)
    if backend == REFERENCE:
        pytest.skip(f"{REFERENCE} is the reference")
    reference = rows(runs.get(REFERENCE, f"{stage}-{finetuning}"))
    mine = rows(runs.get(backend, f"{stage}-{finetuning}"))
    if stage in ("dpo", "rm"):
        # ln 2: dpo's policy is its reference, rm's every score is 0
        assert mine[0]["loss"] == pytest.approx(0.693147, abs=1e-6)
    else:
        assert mine[0]["kl"] == 0 and mine[0]["rewards/chosen"] == 0  # policy = reference
    assert len(mine) == len(reference)
    for t, m in zip(reference, mine, strict=True):
        for key in ("loss", "eval_loss", *PREFERENCE_KEYS):
            if key in t:
                assert m[key] == pytest.approx(t[key], abs=TOLERANCE), (key, t["step"])
        if "grad_norm" in t:
            assert m["grad_norm"] == pytest.approx(t["grad_norm"], rel=1e-4)


# --------------------------------------------------------------------------- exports

EVAL_LOSS = """
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from ftx.core.prepared import IGNORE_INDEX, load_split
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
if sys.argv[3]:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, sys.argv[3])
model.eval()
split = load_split(Path(sys.argv[2]), "val")
total, count = 0.0, 0
with torch.no_grad():
    for i in range(len(split)):
        ids, labels = split[i]
        logits = model(torch.tensor([ids.astype("int64")])).logits[0, :-1].float()
        targets = torch.tensor(labels[1:].astype("int64"))
        total += float(torch.nn.functional.cross_entropy(
            logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((targets != IGNORE_INDEX).sum())
print(json.dumps({"loss": total / count}))
"""


def hf_eval_loss(model: Path, out: Path, adapter: Path | None = None) -> float:
    """The held-out loss of OUT's validation split under Hugging Face's loaders."""
    found = run_in_env(
        hf_environment(), EVAL_LOSS, str(model), str(out / "data"), str(adapter or "")
    )
    return found["loss"]


def last_eval_loss(out: Path) -> float:
    return [r["eval_loss"] for r in rows(out) if "eval_loss" in r][-1]


def test_the_full_export_is_the_trained_model(backend: str, runs: Runs, tiny_llama: Path) -> None:
    """transformers loads OUT/final with the loss the backend measured on its last step."""
    out = runs.get(backend)
    final = out / "final"
    assert (final / "config.json").exists() and (final / "tokenizer.json").exists()
    loss = hf_eval_loss(final, out)
    assert loss == pytest.approx(last_eval_loss(out), abs=TOLERANCE)
    assert abs(loss - hf_eval_loss(tiny_llama, out)) > 1e-3  # it is not the base model


def test_lora_exports_a_peft_adapter_and_a_merged_model(
    backend: str, runs: Runs, tiny_llama: Path
) -> None:
    """LoRA (packed where the backend packs): a PEFT adapter peft loads with the loss the
    backend measured, final/merged with the same loss, and a start at the base model's loss
    (B is zero) equal to the reference's."""
    needs(backend, finetuning="lora")
    out = runs.get(backend, "lora")
    final = out / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    adapted = hf_eval_loss(tiny_llama, out, adapter=final)
    assert adapted == pytest.approx(last_eval_loss(out), abs=TOLERANCE)
    assert hf_eval_loss(final / "merged", out) == pytest.approx(adapted, abs=TOLERANCE)
    assert abs(adapted - hf_eval_loss(tiny_llama, out)) > 1e-3  # the adapter learned
    if backend != REFERENCE and capabilities(REFERENCE).packing == capabilities(backend).packing:
        first = losses(runs.get(REFERENCE, "lora"))[0]
        assert losses(out)[0] == pytest.approx(first, rel=TOLERANCE)


REWARD_SCORES = """
import json, sys, torch
import torch.nn.functional as F
from pathlib import Path
from transformers import AutoModelForSequenceClassification
from ftx.core.prepared import load_split
model_dir, data, adapter = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
extra = {"num_labels": 1} if adapter else {}  # the base is a causal LM: one score asked
model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, **extra)
if adapter:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, adapter)
model.eval()
split = load_split(data, "val")
losses, right = [], 0
for i in range(len(split)):
    (chosen, _), (rejected, _) = split[i]
    with torch.no_grad():
        a = model(torch.tensor([chosen.astype("int64")])).logits[0, 0].double()
        b = model(torch.tensor([rejected.astype("int64")])).logits[0, 0].double()
    losses.append(float(-F.logsigmoid(a - b)))
    right += int(a > b)
config = model.config
print(json.dumps({"loss": sum(losses) / len(losses), "accuracy": right / len(losses),
                  "num_labels": config.num_labels, "architectures": config.architectures}))
"""


@pytest.mark.parametrize("finetuning", [pytest.param("full", marks=pytest.mark.heavy), "lora"])
def test_a_reward_model_learns_and_scores_in_transformers(
    backend: str, runs: Runs, tiny_llama: Path, finetuning: str, tmp_path: Path
) -> None:
    """rm: the score head starts at zero (every score 0, the first loss ln 2); the chosen
    answers come to score higher; OUT/final loads as transformers'
    AutoModelForSequenceClassification (num_labels 1; LoRA: the PEFT SEQ_CLS adapter with
    its score head, and the merged model) and gives the run's last eval loss on the
    held-out pairs; the framework's own files keep the head (score.safetensors)."""
    needs(backend, stage="rm", finetuning=finetuning)
    out = runs.get(backend, f"rm-{finetuning}")
    logged = [r for r in rows(out) if "loss" in r]
    assert logged[0]["rewards/chosen"] == logged[0]["rewards/rejected"] == 0
    later = logged[len(logged) // 2 :]  # single steps are noisy: the second half's means
    assert sum(r["rewards/margins"] for r in later) > 0
    assert sum(r["rewards/accuracies"] for r in later) / len(later) > 0.6
    assert sum(r["loss"] for r in later) / len(later) < 0.693147
    final, data = out / "final", str(out / "data")
    models = [(final, "")]
    if finetuning == "lora":  # the run's merge, ftx merge-lora's, and the adapter on its base
        merged = run_ftx("merge-lora", str(tiny_llama), str(final), str(tmp_path / "merged"))
        assert merged.returncode == 0, merged.stderr
        models = [(final / "merged", ""), (tmp_path / "merged", ""), (tiny_llama, final)]
        refused = run_ftx("convert", str(final), str(tmp_path / "ms"), "--to", "mindspore")
        assert refused.returncode == 2 and "whole modules (score.weight)" in refused.stderr
    for model, adapter in models:
        found = run_in_env(hf_environment(), REWARD_SCORES, str(model), data, str(adapter))
        assert found["num_labels"] == 1
        assert found["architectures"] == ["LlamaForSequenceClassification"] or adapter
        assert found["loss"] == pytest.approx(last_eval_loss(out), abs=TOLERANCE), model
    if finetuning == "lora":
        config = json.loads((final / "adapter_config.json").read_text())
        assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    # torch trains transformers' class itself; the others keep the head beside their files
    (native,) = final.glob("*/score.safetensors") if backend != REFERENCE else (None,)
    if native is not None:
        head = SafetensorsReader(native).read("score.weight")
        exported = (final / "merged") if finetuning == "lora" else final
        weights = SafetensorsReader(exported / "model.safetensors")
        if finetuning == "full":
            assert np.array_equal(head, weights.read("score.weight"))
        assert "lm_head.weight" not in weights.names and head.shape == (1, 128)
        assert abs(head).max() > 0  # it trained


@pytest.mark.parametrize(  # mindformers' (50 s, msrun) in make test-full
    "backend",
    [b if b != "mindformers" else pytest.param(b, marks=pytest.mark.heavy) for b in BACKENDS],
)
def test_sigterm_saves_a_checkpoint_and_resume_continues_identically(
    backend: str, tmp_path: Path, tiny_llama: Path
) -> None:
    path = recipe(tmp_path, tiny_llama, steps=24)
    reference = train(path, tmp_path / "reference", backend)
    out = tmp_path / "interrupted"
    stderr = interrupted_run(path, out, backend)
    assert "interrupted" in stderr and "train.resume=auto" in stderr
    (checkpoint,) = (out / "checkpoints").iterdir()  # save_steps unset: only the signal saved
    assert 3 <= int(checkpoint.name.split("-")[1]) < 24
    assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "rng_state.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    train(path, out, backend, "train.resume=auto")
    assert losses(out) == pytest.approx(losses(reference), abs=1e-5)
    assert [r["step"] for r in rows(out)] == [r["step"] for r in rows(reference)]
    assert (out / "final/config.json").exists()


def test_a_reward_model_resumes_from_its_checkpoint(
    backend: str, runs: Runs, tmp_path: Path
) -> None:
    """rm's checkpoints hold the score head beside the framework's weights and optimizer:
    resumed from step 3 into a new folder, steps 4 to 6 are the run's own."""
    needs(backend, stage="rm")
    run = runs.get(backend, "rm-lora")
    resumed = train(run.parent / "dpo.yaml", tmp_path / "resumed", backend,
                    f"train.resume={run}/checkpoints/checkpoint-3")  # fmt: skip
    assert [r["step"] for r in rows(resumed) if "loss" in r] == [4, 5, 6]
    assert losses(resumed) == pytest.approx(losses(run)[3:], abs=1e-5)
    margins = [r["rewards/margins"] for r in rows(resumed) if "loss" in r]
    assert margins == pytest.approx([r["rewards/margins"] for r in rows(run)[3:] if "loss" in r],
                                    abs=1e-5)  # fmt: skip


def one_process(tmp_path: Path, model: Path, backend: str) -> Path:
    """One process with micro batch 4: the batches two processes of micro batch 2 share."""
    return train(recipe(tmp_path, model), tmp_path / "one", backend)


def test_two_processes_match_one(backend: str, tmp_path: Path, tiny_llama: Path) -> None:
    needs(backend, parallel="dp")
    one = one_process(tmp_path, tiny_llama, backend)
    port = free_port()
    path = recipe(tmp_path, tiny_llama, f"parallel: {{nproc_per_node: 2, master_port: {port}}}")
    path.write_text(path.read_text().replace("micro_batch_size: 4", "micro_batch_size: 2"))
    out = train(path, tmp_path / "dp", backend)
    assert losses(out) == pytest.approx(losses(one), abs=TOLERANCE)
    assert [r.get("tokens") for r in rows(out)] == [r.get("tokens") for r in rows(one)]
    assert "on 2 processes" in (out / "logs/launch.log").read_text()
    found = run_in_env(
        hf_environment(),
        "import json, sys; from safetensors.numpy import load_file;"
        "a = load_file(sys.argv[1]); b = load_file(sys.argv[2]);"
        "print(json.dumps({'keys': sorted(a) == sorted(b),"
        " 'diff': max(float(abs(a[k] - b[k]).max()) for k in a)}))",
        str(one / "final/model.safetensors"),
        str(out / "final/model.safetensors"),
    )
    assert found["keys"] and found["diff"] < TOLERANCE


@pytest.mark.heavy
@pytest.mark.parametrize("stage", ["dpo", "kto", "rm"])
def test_preference_in_two_processes_matches_one(
    backend: str, tmp_path: Path, tiny_llama: Path, stage: str
) -> None:
    """Each rank its half of every step; the same losses and margins (kto: one KL estimate
    over both ranks' rows; rm: the score head's gradients all-reduced with the model's)."""
    needs(backend, stage=stage, parallel="dp")
    path = (feedback_recipe if stage == "kto" else pairs_recipe)(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("stage: dpo", f"stage: {stage}"))
    one = train(path, tmp_path / "one", backend)
    port = free_port()
    path.write_text(
        path.read_text().replace("micro_batch_size: 4", "micro_batch_size: 2")
        + f"parallel: {{nproc_per_node: 2, master_port: {port}}}\n"
    )
    two = train(path, tmp_path / "two", backend)
    assert losses(two) == pytest.approx(losses(one), abs=TOLERANCE)
    margins = [r["rewards/margins"] for r in rows(two) if "loss" in r]
    assert margins == pytest.approx([r["rewards/margins"] for r in rows(one) if "loss" in r],
                                    abs=TOLERANCE)  # fmt: skip


@pytest.mark.heavy
def test_two_local_nodes_train_together(
    backend: str, runs: Runs, tmp_path: Path, tiny_llama: Path
) -> None:
    """Two "nodes" on localhost from one plan, on the most demanding stage: full-fine-tuning
    kto, whose step shares one KL estimate over the rows of every rank (and whose reference
    is a frozen copy, or scored before training by every node into its own OUT), gives the
    one-process run's losses, KL and margins."""
    needs(backend, parallel="multinode", stage="kto")
    one = runs.get(backend, "kto-full")
    path = feedback_recipe(tmp_path, tiny_llama, steps=6)
    path.write_text(path.read_text().replace("finetuning: lora", "finetuning: full"))
    _, port = two_local_nodes(tmp_path, tiny_llama, backend, path)
    assert_one_plan_for_both_nodes(tmp_path, port)
    assert (tmp_path / "n0/final/config.json").exists()
    mine = [r for r in rows(tmp_path / "n0") if "loss" in r]
    theirs = [r for r in rows(one) if "loss" in r]
    assert len(mine) == len(theirs) == 6
    for key in ("loss", "kl", "rewards/margins"):
        assert [r[key] for r in mine] == pytest.approx([r[key] for r in theirs], abs=TOLERANCE)
    assert any(r["kl"] > 0 for r in mine)  # the shared estimate, not a zero on every rank


# --------------------------------------------------------------------------- refusals

# Each value a recipe can ask for, and the overrides that ask for it.
ASKS = {
    ("method.finetuning", "full"): ["method.finetuning=full"],
    ("method.finetuning", "lora"): ["method.finetuning=lora"],
    ("method.finetuning", "freeze"): ["method.finetuning=freeze"],
    ("method.finetuning", "prefix"): ["method.finetuning=prefix"],
    ("method.finetuning", "qlora"): ["method.finetuning=qlora"],
    ("train.precision", "bf16"): ["train.precision=bf16"],
    ("train.precision", "fp16"): ["train.precision=fp16"],
    ("parallel", "tp"): ["parallel.tp=2", "parallel.nproc_per_node=2"],
    ("parallel", "pp"): ["parallel.pp=2", "parallel.nproc_per_node=2"],
    ("parallel", "zero1"): ["parallel.zero=1"],
    ("parallel", "zero2"): ["parallel.zero=2"],
    ("parallel", "zero3"): ["parallel.zero=3"],
    ("parallel", "offload"): ["parallel.zero=2", "parallel.offload=optimizer"],
    ("data.packing", "packing"): ["data.packing=true"],
}


def declared(caps: Capabilities, key: str, value: str) -> str:
    """What the backend declares for one value: 'runs', 'native on a GPU' (the framework's
    own trainer runs it on accelerators only), 'needs a GPU' or 'no'."""
    native = caps.native
    if native is not None and value in native.only:
        return "native on a GPU" if value in native.accelerator_only else "runs"
    if value in caps.accelerator_only:
        return "needs a GPU"
    held = {
        "method.finetuning": caps.finetuning,
        "train.precision": caps.precisions,
        "parallel": caps.parallel,
        "data.packing": {"packing"} if caps.packing else set(),
    }[key]
    return "runs" if value in held else "no"


def test_what_the_backend_cannot_run_is_refused_naming_the_key(
    backend: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """Every value the backend's capabilities do not run is refused by `ftx validate` with
    exit code 2 naming the key; what the native trainer runs on accelerators only is valid
    for the backend with a note naming this machine's device (`ftx run` refuses it), and
    `ftx plan` writes it (worker.json: trainer native); every value it runs validates.
    (The commands run in this process: dozens of them.)"""
    caps = capabilities(backend)
    path = recipe(tmp_path, tiny_llama)
    for (key, value), overrides in ASKS.items():
        verdict = declared(caps, key, value)
        result = run_ftx_here("validate", str(path), "--backend", backend, *overrides)
        if verdict == "runs":
            assert result.returncode == 0, (value, result.stderr[-1500:])
            continue
        if verdict == "native on a GPU":  # valid for the backend; this machine noted
            assert result.returncode == 0, (value, result.stderr[-1500:])
            assert "`ftx run` on this machine would refuse it" in result.stderr
            assert "GPU/NPU only" in result.stderr and "sees only the CPU" in result.stderr
            out = tmp_path / f"plan-{value}"
            planned = run_ftx_here(
                "plan", str(path), "--backend", backend, "--out", str(out), *overrides
            )
            assert planned.returncode == 0, (value, planned.stderr[-1500:])
            assert json.loads((out / "plan/worker.json").read_text())["train"]["trainer"] == (
                "native"
            )
            ftx = run_ftx_here("validate", str(path), "--backend", backend, "train.trainer=ftx",
                          *overrides)  # fmt: skip
            assert ftx.returncode == 2 and "train.trainer: native" in ftx.stderr, ftx.stderr
            continue
        if verdict == "needs a GPU":  # valid for the backend: validate notes this machine
            assert result.returncode == 0, (value, result.stderr[-1500:])
            assert "`ftx run` on this machine would refuse it" in result.stderr
            assert key in result.stderr and "GPU" in result.stderr, result.stderr
            continue
        assert result.returncode == 2, (value, verdict, result.stderr[-1500:])
        assert key in result.stderr and "Traceback" not in result.stderr, (value, result.stderr)
    assert not (tmp_path / "out").exists()  # validation writes nothing


# --------------------------------------------------------------------------- the interface

PROBE = """
import json, sys
from importlib import import_module
from pathlib import Path
import numpy as np
from ftx.core.contract import RunLayout, WorkerConfig
from ftx.core.prepared import load_split, read_manifest
from ftx.core.worker.framework import Framework
from ftx.core.worker.objectives import objective_for
from ftx.core.worker.schedule import Schedule

def host(tensor):
    if hasattr(tensor, "asnumpy"):
        return tensor.asnumpy()
    return tensor.detach().cpu().numpy()

worker, path = import_module(sys.argv[1]), Path(sys.argv[2])
config, layout = WorkerConfig.read(path), RunLayout.of_worker_config(path)
framework = worker.make_framework(config, layout)
assert isinstance(framework, Framework)
framework.start(config, layout)
framework.seed(config.train.seed)
prepared = layout.at(config.data.prepared)
split, pad = load_split(prepared, "train"), read_manifest(prepared)["pad_token_id"]
objective = objective_for(config.method)
size = framework.build(config, layout, split, Schedule.plan(len(split), config.train, 1), objective)
found = {"params": size.params, "trainable": size.trainable}
if sys.argv[3] == "packed":
    alone = load_split(Path(sys.argv[4]), "train")
    by_ids = {tuple(alone[i][0].tolist()): i for i in range(len(alone))}
    worst, examples = 0.0, 0
    for row in range(min(len(split), 4)):
        packed = host(framework.token_logprobs(objective.collate(split, [row], pad)))[0]
        ids, _ = split[row]
        _, segments = split.positions(row)
        for segment in range(1, int(segments.max()) + 1):
            where = np.flatnonzero(segments == segment)
            start, end = int(where[0]), int(where[-1]) + 1
            single = objective.collate(alone, [by_ids[tuple(ids[start:end].tolist())]], pad)
            own = host(framework.token_logprobs(single))[0]
            learned = single.arrays["targets"][0] != -100
            worst = max(worst, float(np.abs(packed[start:end - 1] - own)[learned].max()))
            examples += 1
    found.update(worst=worst, examples=examples)
else:
    batch = objective.collate(split, [0, 1, 2, 3], pad)
    logps = host(framework.token_logprobs(batch))
    nll, learned = framework.eval_loss([(batch, True)])
    prompts = [split[i][0][:12].tolist() for i in range(3)]
    found.update(
        logps=logps.tolist(), nll=nll, learned=learned, batch_learned=batch.learned,
        masked_zero=bool((logps[batch.arrays["targets"] == -100] == 0).all()),
        greedy=framework.greedy(prompts, 6, frozenset({int(sys.argv[3])})),
    )
print(json.dumps(found))
"""


def probe(backend: str, out: Path, *args: str) -> dict:
    """The PROBE script in the backend's environment over the plan in OUT."""
    return run_in_env(backend, PROBE, get_spec(backend).worker, str(out / "plan/worker.json"),
                      *args)  # fmt: skip


def planned(path: Path, out: Path, backend: str, *overrides: str) -> Path:
    result = run_ftx("plan", str(path), "--backend", backend, "--out", str(out), *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_ftx("data", "prepare", str(path), "--out", str(out / "data"), *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def reference_probe(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict:
    tmp = tmp_path_factory.mktemp("probe")
    out = planned(recipe(tmp, tiny_llama), tmp / "out", REFERENCE)
    return probe(REFERENCE, out, str(eos_id(tiny_llama)))


def eos_id(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["eos_token_id"]


@pytest.mark.heavy
def test_the_framework_interface_agrees_with_the_reference(
    backend: str, tmp_path: Path, tiny_llama: Path, reference_probe: dict
) -> None:
    """Driven directly: the worker's framework implements the interface; its per-token
    log-probabilities sum to its own NLL, hold 0 where nothing is learned and equal the
    reference's; its greedy decoding gives the reference's tokens."""
    out = planned(recipe(tmp_path, tiny_llama), tmp_path / "out", backend)
    found = probe(backend, out, str(eos_id(tiny_llama)))
    assert found["learned"] == found["batch_learned"] > 0 and found["masked_zero"]
    assert -sum(map(sum, found["logps"])) == pytest.approx(found["nll"], rel=1e-5)
    assert found["trainable"] == found["params"] == reference_probe["params"]
    mine, theirs = found["logps"], reference_probe["logps"]
    pairs = [(a, b) for r, s in zip(mine, theirs, strict=True) for a, b in zip(r, s, strict=True)]
    assert max(abs(a - b) for a, b in pairs) <= TOLERANCE
    assert found["greedy"] == reference_probe["greedy"]
    assert all(len(answer) <= 6 for answer in found["greedy"])


def test_packed_examples_see_only_themselves(
    backend: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """Each example of a packed row gets the log-probabilities it gets alone."""
    needs(backend, packing=True)
    path = recipe(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("max_seq_len: 64", "max_seq_len: 256"))
    out = planned(path, tmp_path / "out", backend, "data.packing=true")
    alone = tmp_path / "alone"
    result = run_ftx("data", "prepare", str(path), "--out", str(alone))
    assert result.returncode == 0, result.stderr[-2000:]
    found = probe(backend, out, "packed", str(alone))
    assert found["examples"] > 4  # several examples per packed row
    assert found["worst"] <= 1e-5
