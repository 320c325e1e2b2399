"""ftx merge-lora equals peft's merge_and_unload, in the HF and the Paddle layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import ROOT, run_ftx
from ftx.core.convert.convert import convert
from ftx.core.convert.safetensors_stream import SafetensorsReader


def weights(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in folder.glob("*.safetensors"):
        reader = SafetensorsReader(path)
        out.update({n: np.asarray(reader.read(n), dtype=np.float32) for n in reader.names})
    return out


def test_merge_lora_matches_peft(tmp_path: Path, tiny_qwen2: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_qwen2}}}\n"
        f"data: {{datasets: [{ROOT / 'recipes/data/quickstart_train.jsonl'}], max_seq_len: 64,"
        " max_samples: 32}\n"
        "method: {finetuning: lora, lora: {rank: 4, alpha: 8, rslora: true}}\n"
        "train: {max_steps: 3, micro_batch_size: 4, learning_rate: 5.0e-2, logging_steps: 1}\n"
        f"output: {{dir: {tmp_path / 'run'}, merge_lora: true}}\n"
    )
    assert run_ftx("run", str(recipe)).returncode == 0
    final = tmp_path / "run/final"
    result = run_ftx("merge-lora", str(tiny_qwen2), str(final), str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    assert "weights merged (scaling 4)" in result.stdout  # alpha / sqrt(r) with rsLoRA
    ours, peft = weights(tmp_path / "merged"), weights(final / "merged")
    base = weights(tiny_qwen2)
    changed = [n for n in ours if not np.array_equal(ours[n], base[n])]
    assert len(changed) == 2 * 7  # 2 layers x 7 linear weights ("all" targets)
    for name, value in ours.items():
        assert np.abs(value - peft[name]).max() < 1e-6, name
    # Merging into the Paddle-format base gives the Paddle form of the same merged model.
    convert(tiny_qwen2, tmp_path / "base-pd", "paddle")
    assert (
        run_ftx(
            "merge-lora", str(tmp_path / "base-pd"), str(final), str(tmp_path / "m-pd")
        ).returncode
        == 0
    )
    convert(tmp_path / "m-pd", tmp_path / "m-pd-hf", "hf")
    back = weights(tmp_path / "m-pd-hf")
    assert all(np.abs(back[n] - ours[n]).max() < 1e-6 for n in ours)
