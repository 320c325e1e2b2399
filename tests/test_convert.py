"""Checkpoint conversion: bit-exact round trips, verified outputs, clear errors, and the
converted Paddle checkpoint loaded by paddlenlp itself with the torch model's logits."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FTX, run_ftx, run_in_env
from ftx.core.convert.convert import convert
from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo, write_safetensors
from ftx.core.errors import FtxError
from oracles import PADDLENLP


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


def data_region(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little") :]


def test_a_rename_copies_the_data_region_as_it_lies(tmp_path: Path, tiny_llama: Path) -> None:
    """--to mindspore changes names, not bytes: the output's data region is the source's,
    byte for byte, in the source's order, even where the source's header lists the
    tensors in another order than their bytes lie (one kernel copy of the region)."""
    src = tmp_path / "hf"
    shutil.copytree(tiny_llama, src)
    weights = src / "model.safetensors"
    raw = weights.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    meta = header.pop("__metadata__")
    listed = dict(reversed(list(header.items())))  # the header backwards, offsets as they were
    text = json.dumps({"__metadata__": meta, **listed}).encode()
    text += b" " * (-len(text) % 8)
    weights.write_bytes(
        len(text).to_bytes(8, "little") + text + data_region(tiny_llama / "model.safetensors")
    )
    out = tmp_path / "ms"
    convert(src, out, "mindspore", verify=True)
    assert data_region(out / "model.safetensors") == data_region(tiny_llama / "model.safetensors")
    renamed = SafetensorsReader(out / "model.safetensors")
    assert len(renamed.names) == len(header)  # and verify=True compared every tensor


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
    wider = {**config, "intermediate_size": config["intermediate_size"] * 2}
    (alien / "config.json").write_text(json.dumps(wider))
    with pytest.raises(FtxError, match=r"alien/model.safetensors: tensor model\.layers\.0\.mlp"):
        convert(alien, tmp_path / "out", "paddle")
    (alien / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(FtxError, match=r"lacks model\.layers\.2\."):
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


# A model made by transformers itself: Qwen2 with untied embeddings and q/k/v biases.
TRANSFORMERS_QWEN2 = """
import json, sys, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
torch.manual_seed(0)
config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                     max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
model = Qwen2ForCausalLM(config)
with torch.no_grad():
    for layer in model.model.layers:  # transformers zero-initialises biases
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.normal_(0, 0.5)
model.save_pretrained(sys.argv[1])
print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
"""


@pytest.fixture(scope="module")
def transformers_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "qwen2-untied"
    assert run_in_env("torch", TRANSFORMERS_QWEN2, str(out))["params"] > 0
    return out


ARCHS = ["tiny_llama", "tiny_qwen2", "transformers_qwen2"]


@pytest.mark.env
@pytest.mark.parametrize("arch", ARCHS)
def test_paddlenlp_loads_the_conversion_with_torch_logits(
    arch: str, request, tmp_path: Path
) -> None:
    model = request.getfixturevalue(arch)
    assert convert(model, tmp_path / "pd", "paddle", verify=True)["verified"] > 0
    ids = json.dumps([[1, 5, 9, 33, 70, 100, 200, 7]])
    run_in_env("torch", TORCH_LOGITS, str(model), ids, str(tmp_path / "torch.npy"))
    run_in_env(PADDLENLP, PADDLE_LOGITS, str(tmp_path / "pd"), ids, str(tmp_path / "paddle.npy"))
    diff = np.abs(np.load(tmp_path / "torch.npy") - np.load(tmp_path / "paddle.npy")).max()
    assert diff <= 1e-4, diff


MS_SAVE = """
import json, sys, numpy as np
import mindspore as ms
from mindspore.train import serialization
serialization.SLICE_SIZE = 1  # KB: make MindSpore split tensors into several slices
rng = np.random.default_rng(0)
params = {
    "w": ms.Tensor(rng.standard_normal((64, 48)).astype(np.float32)),
    "b": ms.Tensor(rng.standard_normal((48,)).astype(np.float32), ms.bfloat16),
    "h": ms.Tensor(rng.standard_normal((5, 3)).astype(np.float16)),
    "n": ms.Tensor(np.arange(6, dtype=np.int64)),
}
ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], sys.argv[1], crc_check=True)
print(json.dumps({k: v.float().asnumpy().tolist() for k, v in params.items()}))
"""

MS_LOAD = """
import json, sys, numpy as np
import mindspore as ms
params = ms.load_checkpoint(sys.argv[1], crc_check=True)
print(json.dumps({k: [str(v.dtype), v.float().asnumpy().tolist()] for k, v in params.items()}))
"""


@pytest.mark.env
def test_ckpt_files_interoperate_with_mindspore(tmp_path: Path) -> None:
    from ftx.core.convert.mindspore_ckpt import CkptReader, write_ckpt

    saved = run_in_env("mindformers", MS_SAVE, str(tmp_path / "ms.ckpt"))
    reader = CkptReader(tmp_path / "ms.ckpt")
    assert [reader.info(n).dtype for n in reader.names] == ["F32", "BF16", "F16", "I64"]
    assert len(reader.entries["w"][1]) > 1  # MindSpore split it; ftx joined it
    for name, expected in saved.items():
        value = np.asarray(reader.read(name))
        if reader.info(name).dtype == "BF16":
            value = (value.astype(np.uint32) << 16).view(np.float32)
        assert np.array_equal(value.astype(np.float64), np.asarray(expected)), name
    bf16_bits = np.array([0x3F80, 0xC000, 0x4049], dtype=np.uint16)  # 1, -2, 3.140625
    items = [
        (reader.info("w"), lambda: reader.read("w")),
        (TensorInfo("bf", "BF16", (3,)), lambda: bf16_bits),
        (TensorInfo("i", "I32", (2, 2)), lambda: np.arange(4, dtype=np.int32).reshape(2, 2)),
    ]
    write_ckpt(tmp_path / "ftx.ckpt", items, crc=True)
    loaded = run_in_env("mindformers", MS_LOAD, str(tmp_path / "ftx.ckpt"))
    assert loaded["bf"] == ["BFloat16", [1.0, -2.0, 3.140625]]
    assert loaded["i"] == ["Int32", [[0.0, 1.0], [2.0, 3.0]]]
    assert np.allclose(loaded["w"][1], saved["w"], atol=0)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((tmp_path / "ftx.ckpt").read_bytes()[:-40] + b"crc_num" + bytes(10))
    with pytest.raises(FtxError, match=r"broken\.ckpt"):
        CkptReader(broken)


MINDFORMERS_LOSS = """
import json, sys, numpy as np
import mindspore as ms
ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
from mindformers import LlamaConfig, LlamaForCausalLM
folder, ids = sys.argv[1], json.loads(sys.argv[2])
section = dict(json.load(open(folder + "/config.json"))["mindformers_model_config"])
section.pop("type"); section.pop("max_position_embedding")
config = LlamaConfig(
    batch_size=1, seq_length=len(ids) - 1, compute_dtype="float32",
    layernorm_compute_type="float32", softmax_compute_type="float32", rotary_dtype="float32",
    param_init_type="float32", use_flash_attention=False, use_rope_slice=True,
    fused_rms_norm=False, use_past=False, **{k: v for k, v in section.items() if v is not None},
)
model = LlamaForCausalLM(config)
not_loaded, unused = ms.load_param_into_net(
    model, ms.load_checkpoint(folder + "/model.ckpt"), strict_load=True
)
model.set_train(True)  # in training mode the model drops the last token / first label itself
tokens = ms.Tensor(np.array([ids], dtype=np.int32))
loss = float(model(tokens, labels=tokens).asnumpy())
print(json.dumps({"not_loaded": list(not_loaded), "unused": list(unused), "loss": loss}))
"""

TORCH_LOSS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = torch.tensor(json.loads(sys.argv[2]))
print(json.dumps({"loss": float(model(ids, labels=ids).loss)}))
"""


@pytest.mark.env
@pytest.mark.parametrize("arch", ARCHS)
def test_mindformers_loads_the_ckpt_with_torch_loss(arch: str, request, tmp_path: Path) -> None:
    model = request.getfixturevalue(arch)
    result = run_ftx(
        "convert",
        str(model),
        str(tmp_path / "ms"),
        "--to",
        "mindspore",
        "--format",
        "ckpt",
        "--verify",
    )
    assert result.returncode == 0, result.stderr
    ids = [1, 6, 9, 33, 70, 100, 200, 7, 8]  # no pad id: MindFormers masks pad tokens
    theirs = run_in_env("mindformers", MINDFORMERS_LOSS, str(tmp_path / "ms"), json.dumps(ids))
    ours = run_in_env("torch", TORCH_LOSS, str(model), json.dumps([ids]))
    assert theirs["not_loaded"] == [] and theirs["unused"] == []
    assert abs(theirs["loss"] - ours["loss"]) < 1e-4, (theirs, ours)
    back = run_ftx("convert", str(tmp_path / "ms"), str(tmp_path / "hf"), "--to", "hf", "--verify")
    assert back.returncode == 0, back.stderr
    assert tensors(tmp_path / "hf") == tensors(model)


def test_an_interrupted_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    from ftx.core.convert.safetensors_stream import TensorInfo, write_safetensors
    from ftx.core.models.architectures import ARCHITECTURES, parameter_shapes

    config = {
        "model_type": "llama",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "vocab_size": 32000,
    }
    src = tmp_path / "big"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    shapes = parameter_shapes(ARCHITECTURES["llama"], config)
    items = [
        (TensorInfo(name, "BF16", shape), lambda shape=shape: np.ones(shape, np.uint16))
        for name, shape in shapes.items()
    ]
    write_safetensors(src / "model.safetensors", items, {"format": "pt"})
    for sig in (signal.SIGTERM, signal.SIGINT):
        dst = tmp_path / f"out-{sig}"
        proc = subprocess.Popen(
            [str(FTX), "convert", str(src), str(dst), "--to", "paddle"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 60
        while time.time() < deadline and not any(
            p.stat().st_size > 0 for p in tmp_path.glob(f".{dst.name}.*.partial/*")
        ):
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert not dst.exists()
        assert not list(tmp_path.glob(f".{dst.name}.*")), "a staging folder was left behind"
