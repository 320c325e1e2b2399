"""ftx merge-lora equals peft's merge_and_unload, in the HF and the Paddle layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_ftx
from ftx.core.convert.convert import convert
from ftx.core.convert.safetensors_stream import SafetensorsReader


def weights(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in folder.glob("*.safetensors"):
        reader = SafetensorsReader(path)
        out.update({n: np.asarray(reader.read(n), dtype=np.float32) for n in reader.names})
    return out


def numpy_adapter(folder: Path, model: Path, rank: int = 2) -> Path:
    """A PEFT adapter (rank ``rank`` on layer 0's q_proj) written with numpy alone."""
    import json

    from safetensors.numpy import save_file

    hidden = json.loads((model / "config.json").read_text())["hidden_size"]
    folder.mkdir()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    rng = np.random.default_rng(0)
    save_file(
        {
            f"{prefix}.lora_A.weight": rng.normal(size=(rank, hidden)).astype(np.float32),
            f"{prefix}.lora_B.weight": rng.normal(size=(hidden, rank)).astype(np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 4, "lora_dropout": 0.0,
              "target_modules": ["q_proj"], "base_model_name_or_path": str(model),
              "task_type": "CAUSAL_LM"}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


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


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"lora_alpha": float("nan")}, "'lora_alpha' is nan"),
        ({"lora_alpha": "8"}, "'lora_alpha' is '8'"),
        ({"r": True}, "'r' is True"),
        ({"r": 0}, "the rank must be at least 1"),
        ({"lora_dropout": 1.5}, "the dropout in [0, 1)"),
        (None, "a JSON list, not an object"),
    ],
)
def test_adapter_settings_are_checked_before_anything_is_merged(
    change: dict | None, needle: str, tmp_path: Path, tiny_llama: Path
) -> None:
    """A NaN alpha would merge into NaN weights, a string alpha would not scale; each bad
    setting is one paragraph and exit code 2, and no merged folder is left."""
    import json

    adapter = numpy_adapter(tmp_path / "adapter", tiny_llama)
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    text = json.dumps([config]) if change is None else json.dumps({**config, **change})
    config_path.write_text(text)
    result = run_ftx("merge-lora", str(tiny_llama), str(adapter), str(tmp_path / "merged"))
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "merged").exists()


def test_a_lora_factor_that_is_not_a_matrix_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    from safetensors.numpy import load_file, save_file

    adapter = numpy_adapter(tmp_path / "adapter", tiny_llama)
    merged = run_ftx("merge-lora", str(tiny_llama), str(adapter), str(tmp_path / "ok"))
    assert merged.returncode == 0, merged.stderr  # the adapter as written merges
    weights_path = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights_path))
    name = next(n for n in tensors if "lora_A" in n)
    tensors[name] = tensors[name].reshape(-1)
    save_file(tensors, str(weights_path))
    result = run_ftx("merge-lora", str(tiny_llama), str(adapter), str(tmp_path / "merged"))
    assert result.returncode == 2 and "each factor is a matrix" in result.stderr, result.stderr
