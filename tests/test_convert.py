"""Checkpoint conversion: bit-exact round trips, verified outputs, clear errors, and the
converted Paddle checkpoint loaded by paddlenlp itself with the torch model's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ftx, run_in_env
from ftx.core.convert.convert import convert
from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo, write_safetensors
from ftx.core.errors import FtxError


def tensors(folder: Path) -> dict[str, tuple[str, tuple, bytes]]:
    out = {}
    for path in folder.glob("*.safetensors"):
        reader = SafetensorsReader(path)
        for name in reader.names:
            info = reader.info(name)
            out[name] = (info.dtype, info.shape, np.asarray(reader.read(name)).tobytes())
    return out


def as_dtype(src: Path, dst: Path, dtype: str) -> Path:
    """A copy of an fp32 HF checkpoint with its weights in F16 or BF16 (raw bits)."""
    shutil.copytree(src, dst)
    reader = SafetensorsReader(src / "model.safetensors")

    def cast(name: str):
        value = np.asarray(reader.read(name), dtype=np.float32)
        if dtype == "F16":
            return lambda: value.astype(np.float16)
        bits = value.view(np.uint32)
        return lambda: ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)

    items = [(TensorInfo(n, dtype, reader.info(n).shape), cast(n)) for n in reader.names]
    (dst / "model.safetensors").unlink()
    write_safetensors(dst / "model.safetensors", items, {"format": "pt"})
    return dst


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_round_trips_are_bit_exact(tmp_path: Path, tiny_llama: Path, dtype: str) -> None:
    hf = tiny_llama if dtype == "F32" else as_dtype(tiny_llama, tmp_path / "hf", dtype)
    original = tensors(hf)
    assert {d for d, _, _ in original.values()} == {dtype}
    for route in (("paddle", "hf"), ("mindspore", "hf"), ("paddle", "mindspore", "hf")):
        current = hf
        for step, target in enumerate(route):
            out = tmp_path / f"{'-'.join(route)}-{step}-{target}"
            summary = convert(current, out, target, verify=True)
            assert summary["verified"] == len(original)
            current = out
        assert tensors(current) == original, route


def test_paddle_layout_names_transposes_and_metadata(tmp_path: Path, tiny_qwen2: Path) -> None:
    result = run_ftx("convert", str(tiny_qwen2), str(tmp_path / "pd"), "--to", "paddle", "--verify")
    assert result.returncode == 0, result.stderr
    assert "26 verified" in result.stdout
    reader = SafetensorsReader(tmp_path / "pd/model.safetensors")
    assert reader.metadata == {"format": "np"}
    hf = SafetensorsReader(tiny_qwen2 / "model.safetensors")
    q = "self_attn.q_proj.weight"
    assert reader.info(f"qwen2.layers.0.{q}").shape == hf.info(f"model.layers.0.{q}").shape[::-1]
    assert reader.info("qwen2.layers.0.self_attn.q_proj.bias").shape == (128,)
    assert "lm_head.weight" not in reader.names  # tied embeddings stay tied
    assert (tmp_path / "pd/tokenizer.json").exists()
    config = json.loads((tmp_path / "pd/config.json").read_text())
    assert config["dtype"] == "float32" and config["model_type"] == "qwen2"
    ms = run_ftx("convert", str(tiny_qwen2), str(tmp_path / "ms"), "--to", "mindspore")
    assert ms.returncode == 0, ms.stderr
    ms_reader = SafetensorsReader(tmp_path / "ms/model.safetensors")
    assert ms_reader.metadata == {"format": "ms"}
    assert "model.layers.1.feed_forward.w1.weight" in ms_reader.names
    assert json.loads((tmp_path / "ms/config.json").read_text())["mindformers_model_config"][
        "qkv_has_bias"
    ]


def test_bad_inputs_name_the_file_and_tensor(tmp_path: Path, tiny_llama: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FtxError, match=r"model.safetensors: truncated file: tensor "):
        convert(broken, tmp_path / "out", "paddle")
    assert not (tmp_path / "out").exists()  # nothing half-written
    alien = tmp_path / "alien"
    shutil.copytree(tiny_llama, alien)
    config = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(FtxError, match="unknown architecture 'gpt_neox'"):
        convert(alien, tmp_path / "out", "paddle")
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_llama, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        }
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FtxError, match=r"model-00002-of-00002.safetensors named in the index"):
        convert(sharded, tmp_path / "out", "paddle")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    result = run_ftx("convert", str(tiny_llama), str(tmp_path / "full"), "--to", "paddle")
    assert result.returncode == 2 and "--force" in result.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep"


PADDLE_LOGITS = """
import json, sys, numpy as np, paddle
from paddlenlp.transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="float32")
model.eval()
ids = paddle.to_tensor(np.array(json.loads(sys.argv[2]), dtype="int64"))
with paddle.no_grad():
    out = model(ids)
logits = out[0] if isinstance(out, (tuple, list)) else out.logits
np.save(sys.argv[3], logits.numpy())
print(json.dumps({"shape": list(logits.shape)}))
"""

TORCH_LOGITS = """
import json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    logits = model(torch.tensor(json.loads(sys.argv[2]))).logits.numpy()
np.save(sys.argv[3], logits)
print(json.dumps({"shape": list(logits.shape)}))
"""


@pytest.mark.env
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_paddlenlp_loads_the_conversion_with_torch_logits(
    arch: str, request, tmp_path: Path
) -> None:
    model = request.getfixturevalue(arch)
    assert convert(model, tmp_path / "pd", "paddle", verify=True)["verified"] > 0
    ids = json.dumps([[1, 5, 9, 33, 70, 100, 200, 7]])
    run_in_env("torch", TORCH_LOGITS, str(model), ids, str(tmp_path / "torch.npy"))
    run_in_env("paddle", PADDLE_LOGITS, str(tmp_path / "pd"), ids, str(tmp_path / "paddle.npy"))
    diff = np.abs(np.load(tmp_path / "torch.npy") - np.load(tmp_path / "paddle.npy")).max()
    assert diff <= 1e-4, diff
