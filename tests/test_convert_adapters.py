"""LoRA adapters between PEFT, PaddleNLP and MindFormers: each framework's own loader
takes the converted adapter and gives the PEFT model's outputs; round trips are exact;
merge-lora takes any adapter form into any base format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ftx, run_in_env
from ftx.core.convert.adapters import read_adapter
from ftx.core.convert.convert import convert
from ftx.core.convert.safetensors_stream import SafetensorsReader
from oracles import PADDLENLP

IDS = [[1, 6, 9, 33, 70, 100, 200, 7, 8]]

# A PEFT adapter with non-zero B (PEFT initialises B to zero), its logits and loss.
PEFT_ADAPTER = """
import json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
base, out, ids, rslora = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(base)
config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                    use_rslora=rslora)
model = get_peft_model(model, config)
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.normal_(0, 0.05)
model.save_pretrained(out)
model.eval()
ids = torch.tensor(ids)
with torch.no_grad():
    out_ = model(ids, labels=ids)
np.save(out + "/logits.npy", out_.logits.numpy())
print(json.dumps({"loss": float(out_.loss)}))
"""

PADDLE_LORA_LOGITS = """
import json, sys, numpy as np, paddle
from paddlenlp.transformers import AutoModelForCausalLM
from paddlenlp.peft import LoRAModel
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="float32")
if sys.argv[2] != "-":  # "-": the base alone
    model = LoRAModel.from_pretrained(model, sys.argv[2])
model.eval()
ids = paddle.to_tensor(np.array(json.loads(sys.argv[3]), dtype="int64"))
with paddle.no_grad():
    out = model(ids)
logits = out[0] if isinstance(out, (tuple, list)) else out.logits
np.save(sys.argv[4], logits.numpy())
names = [n for n, p in model.named_parameters() if "lora" in n]
print(json.dumps({"lora_params": len(names)}))
"""

MINDFORMERS_LORA_LOSS = """
import json, sys, numpy as np
import mindspore as ms
ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
from mindformers import LlamaConfig, LlamaForCausalLM
from mindformers.pet import get_pet_model
base, adapter, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
section = dict(json.load(open(base + "/config.json"))["mindformers_model_config"])
section.pop("type"); section.pop("max_position_embedding")
pet = json.load(open(adapter + "/pet_config.json"))
config = LlamaConfig(
    batch_size=1, seq_length=len(ids) - 1, compute_dtype="float32",
    layernorm_compute_type="float32", softmax_compute_type="float32", rotary_dtype="float32",
    param_init_type="float32", use_flash_attention=False, use_rope_slice=True,
    fused_rms_norm=False, use_past=False, pet_config=pet,
    **{k: v for k, v in section.items() if v is not None},
)
model = get_pet_model(LlamaForCausalLM(config), config.pet_config)
weights = ms.load_checkpoint(base + "/model.ckpt")
weights.update(ms.load_checkpoint(adapter + "/adapter_model.ckpt"))
not_loaded, unused = ms.load_param_into_net(model, weights, strict_load=True)
model.set_train(True)
tokens = ms.Tensor(np.array([ids], dtype=np.int32))
loss = float(model(tokens, labels=tokens).asnumpy())
print(json.dumps({"not_loaded": list(not_loaded), "unused": list(unused), "loss": loss}))
"""


def factors(folder: Path) -> dict[str, bytes]:
    adapter = read_adapter(folder, trust_pickle=True)
    return {
        f"{name}:{part}": np.ascontiguousarray(factor.read()).tobytes()
        for name, pair in adapter.pairs.items()
        for part, factor in pair.items()
    }


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("peft") / "adapter"
    found = run_in_env("torch", PEFT_ADAPTER, str(tiny_llama), str(out), json.dumps(IDS), "0")
    return out, found["loss"]


@pytest.mark.env
def test_paddlenlp_lora_model_gives_the_peft_logits(
    tmp_path: Path, tiny_llama: Path, peft_adapter: tuple[Path, float]
) -> None:
    adapter, _ = peft_adapter
    convert(tiny_llama, tmp_path / "base-pd", "paddle")
    result = run_ftx(
        "convert", str(adapter), str(tmp_path / "lora-pd"), "--to", "paddle", "--verify"
    )
    assert result.returncode == 0, result.stderr
    assert "28 verified" in result.stdout  # 2 layers x 7 modules x (A, B)
    config = json.loads((tmp_path / "lora-pd/lora_config.json").read_text())
    assert (
        config["r"] == 4 and config["lora_alpha"] == 8 and ".*q_proj.*" in config["target_modules"]
    )
    shapes = SafetensorsReader(tmp_path / "lora-pd/peft_model.safetensors")
    assert shapes.info("llama.layers.0.mlp.down_proj.lora_A").shape == (352, 4)  # [intermediate, r]
    found = run_in_env(
        PADDLENLP,
        PADDLE_LORA_LOGITS,
        str(tmp_path / "base-pd"),
        str(tmp_path / "lora-pd"),
        json.dumps(IDS),
        str(tmp_path / "paddle.npy"),
    )
    assert found["lora_params"] == 28
    peft_logits = np.load(adapter / "logits.npy")
    base_only = run_in_env(
        PADDLENLP,
        PADDLE_LORA_LOGITS,
        str(tmp_path / "base-pd"),
        "-",
        json.dumps(IDS),
        str(tmp_path / "base.npy"),
    )
    assert base_only["lora_params"] == 0
    assert np.abs(np.load(tmp_path / "base.npy") - peft_logits).max() > 1e-3  # LoRA matters
    assert np.abs(np.load(tmp_path / "paddle.npy") - peft_logits).max() <= 1e-4
    # Paddle -> MindSpore -> PEFT is bit-exact, in safetensors and in .pdparams.
    convert(tmp_path / "lora-pd", tmp_path / "lora-ms", "mindspore")
    convert(tmp_path / "lora-ms", tmp_path / "lora-pdp", "paddle", file_format="pdparams")
    convert(tmp_path / "lora-pdp", tmp_path / "lora-hf", "hf", trust_pickle=True)
    assert factors(tmp_path / "lora-hf") == factors(adapter)
    back = json.loads((tmp_path / "lora-hf/adapter_config.json").read_text())
    assert (back["r"], back["lora_alpha"], back["use_rslora"]) == (4, 8, False)


@pytest.mark.env
def test_mindformers_pet_model_gives_the_peft_loss(
    tmp_path: Path, tiny_llama: Path, peft_adapter: tuple[Path, float]
) -> None:
    adapter, peft_loss = peft_adapter
    convert(tiny_llama, tmp_path / "base-ms", "mindspore", file_format="ckpt")
    convert(adapter, tmp_path / "lora-ms", "mindspore", file_format="ckpt", verify=True)
    pet = json.loads((tmp_path / "lora-ms/pet_config.json").read_text())
    assert pet["pet_type"] == "lora" and pet["lora_alpha"] == 8 and ".*wq" in pet["target_modules"]
    found = run_in_env(
        "mindformers",
        MINDFORMERS_LORA_LOSS,
        str(tmp_path / "base-ms"),
        str(tmp_path / "lora-ms"),
        json.dumps(IDS[0]),
    )
    assert found["not_loaded"] == [] and found["unused"] == []
    assert abs(found["loss"] - peft_loss) < 1e-4, (found, peft_loss)


@pytest.mark.env
def test_rslora_adapter_keeps_its_scaling_everywhere(tmp_path: Path, tiny_llama: Path) -> None:
    adapter = tmp_path / "rs"
    run_in_env("torch", PEFT_ADAPTER, str(tiny_llama), str(adapter), json.dumps(IDS), "1")
    convert(adapter, tmp_path / "pd", "paddle", verify=True)
    assert json.loads((tmp_path / "pd/lora_config.json").read_text())["rslora"] is True
    assert read_adapter(tmp_path / "pd").scaling == 4.0  # 8 / sqrt(4)
    convert(adapter, tmp_path / "ms", "mindspore", verify=True)
    assert json.loads((tmp_path / "ms/pet_config.json").read_text())["lora_alpha"] == 16


@pytest.mark.env
def test_merge_lora_from_a_paddle_adapter_into_a_ckpt_base(
    tmp_path: Path, tiny_llama: Path, peft_adapter: tuple[Path, float]
) -> None:
    adapter, _ = peft_adapter
    assert (
        run_ftx("merge-lora", str(tiny_llama), str(adapter), str(tmp_path / "ref")).returncode == 0
    )
    convert(adapter, tmp_path / "lora-pd", "paddle")
    convert(tiny_llama, tmp_path / "base-ms", "mindspore", file_format="ckpt")
    result = run_ftx(
        "merge-lora", str(tmp_path / "base-ms"), str(tmp_path / "lora-pd"), str(tmp_path / "m")
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m/model.ckpt").exists()
    convert(tmp_path / "m", tmp_path / "m-hf", "hf")
    ours = SafetensorsReader(tmp_path / "m-hf/model.safetensors")
    ref = SafetensorsReader(tmp_path / "ref/model.safetensors")
    for name in ref.names:
        assert np.abs(np.asarray(ours.read(name)) - np.asarray(ref.read(name))).max() < 1e-6, name
