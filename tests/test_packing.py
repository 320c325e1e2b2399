"""Packing: first-fit-decreasing over the whole dataset, and attention isolated per example."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import ROOT, run_ftx, run_in_env
from ftx.core.data.packing import first_fit_decreasing
from ftx.core.data.prepare import prepare
from ftx.core.prepared import load_split, write_split
from ftx.core.recipe import load_recipe


def test_first_fit_decreasing_is_valid_complete_and_dense() -> None:
    rng = random.Random(0)
    lengths = [min(2048, max(8, int(rng.lognormvariate(5.3, 0.8)))) for _ in range(20000)]
    groups = first_fit_decreasing(lengths, 2048)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 2048 for g in groups)
    assert sum(lengths) / (len(groups) * 2048) > 0.99
    assert groups == first_fit_decreasing(lengths, 2048)  # deterministic


def test_packed_rows_restart_positions_and_number_segments(tmp_path: Path) -> None:
    examples = [([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]), ([6, 7, 8, 9], [6, 7, 8, 9])]
    groups = first_fit_decreasing([len(ids) for ids, _ in examples], 6)
    assert groups == [[2, 1], [0]]
    write_split(tmp_path / "train", examples, groups)
    split = load_split(tmp_path, "train")
    assert len(split) == 2
    ids, labels = split[0]
    positions, segments = split.positions(0)
    assert ids.tolist() == [6, 7, 8, 9, 4, 5] and labels.tolist() == [6, 7, 8, 9, -100, 5]
    assert positions.tolist() == [0, 1, 2, 3, 0, 1]
    assert segments.tolist() == [1, 1, 1, 1, 2, 2]
    assert split[1][0].tolist() == [1, 2, 3] and split.positions(1)[1].tolist() == [1, 1, 1]
    with pytest.raises(ValueError):
        first_fit_decreasing([7], 6)


ISOLATION = """
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from ftx.backends.torch import modeling
from ftx.backends.torch.modeling import block_causal_mask, device_batch, nll_sum
from ftx.core.prepared import load_split, write_split
from ftx.core.worker.objectives import NEXT_TOKEN_NLL as objective
packed = load_split(Path(sys.argv[2]), "train")
alone = load_split(Path(sys.argv[3]), "train")
modeling._register_segment_attention()
cpu = torch.device("cpu")
found = {}
for mode in ("segments", "block_mask"):
    implementation = modeling.SEGMENT_ATTENTION if mode == "segments" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation=implementation)
    model.eval()
    worst, rows_checked = 0.0, 0
    with torch.no_grad():
        for r in range(len(packed)):
            ids, _ = packed[r]
            _, segments = packed.positions(r)
            if segments.max() < 2:
                continue
            rows_checked += 1
            host = objective.collate(packed, [r], 0)
            batch = device_batch(host, cpu)
            if mode == "block_mask":
                batch.pop("ftx_segments")
                batch["attention_mask"] = block_causal_mask(torch.as_tensor(segments)[None].long())
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "targets")}
            logits = model(**inputs).logits[0]
            loss_packed, n_packed = nll_sum(model, batch), host.learned
            loss_alone, n_alone = 0.0, 0
            for seg in range(1, int(segments.max()) + 1):
                piece = ids[segments == seg].tolist()
                match = [i for i in range(len(alone)) if alone[i][0].tolist() == piece]
                one = objective.collate(alone, match[:1], 0)
                single = device_batch(one, cpu)
                ref = model(input_ids=single["input_ids"]).logits[0]
                worst = max(worst, float((logits[segments == seg] - ref).abs().max()))
                l, n = nll_sum(model, single), one.learned
                loss_alone, n_alone = loss_alone + float(l), n_alone + n
            worst = max(worst, abs(float(loss_packed) - loss_alone) / max(n_alone, 1))
            assert n_packed == n_alone
    found[mode] = {"worst": worst, "rows": rows_checked}
print(json.dumps(found))
"""


def test_examples_inside_a_pack_see_only_themselves(tmp_path: Path, tiny_llama: Path) -> None:
    data = ROOT / "recipes/data/quickstart_train.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_llama}}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 96, max_samples: 40, packing: true}}\n"
    )
    prepare(load_recipe(recipe).recipe, tmp_path / "packed")
    prepare(load_recipe(recipe, ["data.packing=false"]).recipe, tmp_path / "alone")
    assert load_split(tmp_path / "packed", "train").packed
    found = run_in_env(
        "torch", ISOLATION, str(tiny_llama), str(tmp_path / "packed"), str(tmp_path / "alone")
    )
    for mode in ("segments", "block_mask"):  # both ways of isolating examples
        assert found[mode]["rows"] >= 5
        assert found[mode]["worst"] < 1e-5, (mode, found)


def test_packed_training_runs_and_stats_report_efficiency(tmp_path: Path, tiny_llama: Path) -> None:
    data = ROOT / "recipes/data/quickstart_train.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_llama}}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 256, max_samples: 200, packing: true}}\n"
        "method: {finetuning: full}\n"
        "train: {max_steps: 3, micro_batch_size: 2, logging_steps: 1, learning_rate: 1.0e-3}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    result = run_ftx("run", str(recipe))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] > 0 for r in rows)
    stats = run_ftx("data", "stats", str(recipe))
    assert stats.returncode == 0, stats.stderr
    assert "packing efficiency" in stats.stdout


def test_alpaca_like_set_packs_above_98_percent_at_2048(tmp_path: Path, tiny_llama: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "alpaca_like.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "bench/make_alpaca_like.py"), str(data), "--rows", "4000"],
        check=True,
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_llama}}}\n"
        f"data: {{datasets: [{data}], max_seq_len: 2048, packing: true}}\n"
        "train: {micro_batch_size: 8}\n"
    )
    stats = run_ftx("data", "stats", str(recipe))
    assert stats.returncode == 0, stats.stderr
    line = next(ln for ln in stats.stdout.splitlines() if "train packing efficiency" in ln)
    efficiency = float(line.split("│")[2].strip().rstrip("%")) / 100
    padded = next(ln for ln in stats.stdout.splitlines() if "train padding efficiency" in ln)
    assert efficiency >= 0.98, line
    assert efficiency > float(padded.split("│")[2].split("%")[0]) / 100  # beats padding


def test_data_show_json_is_aligned_and_masked(tmp_path: Path, tiny_llama: Path) -> None:
    data = ROOT / "recipes/data/quickstart_train.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_llama}}}\n"
        f"data: {{datasets: [{data}], max_samples: 20, max_seq_len: 128}}\n"
    )
    out = run_ftx("data", "show", str(recipe), "-n", "2", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert len(row["labels"]) == len(row["input_ids"]) and "position_ids" not in row
        learned = [i for i, lab in enumerate(row["labels"]) if lab != -100]
        assert learned and all(row["labels"][i] == row["input_ids"][i] for i in learned)
        assert row["labels"][0] == -100  # the prompt is masked
    packed = run_ftx("data", "show", str(recipe), "data.packing=true", "-n", "1", "--json")
    row = json.loads(packed.stdout.splitlines()[0])
    assert row["position_ids"][0] == 0 and row["position_ids"].count(0) >= 2
    text = run_ftx("data", "show", str(recipe), "-n", "1")
    assert text.returncode == 0 and "Reverse the letters." in text.stdout
    prepared = run_ftx("data", "prepare", str(recipe), "--out", str(tmp_path / "p"))
    assert prepared.returncode == 0 and (tmp_path / "p/manifest.json").exists()
    again = run_ftx("data", "show", str(tmp_path / "p"), "-n", "1", "--json")
    assert json.loads(again.stdout) == rows[0]


def test_show_uses_the_recipes_tokenizer_when_the_cache_came_from_another_copy(
    tmp_path: Path, tiny_llama: Path
) -> None:
    import shutil

    data = ROOT / "recipes/data/quickstart_train.jsonl"
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_llama, first)
    for model in (first, second):
        recipe = tmp_path / f"{model.name}.yaml"
        recipe.write_text(
            f"model: {{path: {model}}}\ndata: {{datasets: [{data}], max_samples: 5}}\n"
        )
        if model is first:
            assert (
                run_ftx("data", "prepare", str(recipe), "--out", str(tmp_path / "p")).returncode
                == 0
            )
            shutil.copytree(first, second)
            shutil.rmtree(first)  # the cached manifest now names a folder that is gone
    shown = run_ftx("data", "show", str(tmp_path / "b.yaml"), "-n", "1")
    assert shown.returncode == 0, shown.stderr
    assert "Reverse the letters." in shown.stdout
    stale = run_ftx("data", "show", str(tmp_path / "p"), "-n", "1")
    assert stale.returncode == 2 and "is gone" in stale.stderr
