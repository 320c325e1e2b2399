"""Conversion sources beyond safetensors: Paddle .pdparams (and PaddleNLP tensor-parallel
sets split by PaddleNLP itself), torch pytorch_model.bin, MindSpore per-rank folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ftx, run_in_env
from ftx.core.convert.convert import convert
from ftx.core.convert.mindspore_ckpt import write_ckpt
from ftx.core.convert.safetensors_stream import SafetensorsReader, TensorInfo
from ftx.core.errors import FtxError
from oracles import PADDLENLP


def tensors(folder: Path) -> dict[str, tuple[str, tuple, bytes]]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        reader = SafetensorsReader(path)
        for name in reader.names:
            info = reader.info(name)
            out[name] = (info.dtype, info.shape, np.asarray(reader.read(name)).tobytes())
    return out


# PaddleNLP's own tensor-parallel split functions cut the Paddle checkpoint into ranks.
PADDLE_TP_SPLIT = """
import json, sys, numpy as np, paddle
from safetensors.numpy import load_file
from paddlenlp.transformers import AutoConfig, LlamaForCausalLM, Qwen2ForCausalLM
folder, out, degree = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = AutoConfig.from_pretrained(folder)
model_class = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[config.model_type]
state = load_file(folder + "/model.safetensors")
prefix = config.model_type + "."
split = 0
for rank in range(degree):
    config.tensor_parallel_degree, config.tensor_parallel_rank = degree, rank
    actions = model_class._get_tensor_parallel_mappings(config, is_split=True)
    piece = {}
    for name, value in state.items():
        action = actions.get(name.removeprefix(prefix))
        piece[name] = action(value) if action else value
        split += rank == 0 and action is not None
    piece = {k: paddle.to_tensor(v) for k, v in piece.items()}
    paddle.save(piece, f"{out}/model_state.tp{rank:02d}_pp00.pdparams")
print(json.dumps({"split": split}))
"""

PADDLE_LOAD = """
import json, sys, paddle
state = paddle.load(sys.argv[1])
print(json.dumps({k: [str(v.dtype), list(v.shape)] for k, v in state.items()}))
"""


@pytest.mark.env
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_paddlenlp_tensor_parallel_sets_merge_back(arch: str, request, tmp_path: Path) -> None:
    model = request.getfixturevalue(arch)
    convert(model, tmp_path / "pd", "paddle")
    tp = tmp_path / "tp"
    tp.mkdir()
    shutil.copy(tmp_path / "pd/config.json", tp / "config.json")
    found = run_in_env(PADDLENLP, PADDLE_TP_SPLIT, str(tmp_path / "pd"), str(tp), "2")
    assert found["split"] >= 2 * 6  # per layer: q, k, v, o, gate, up, down (+ biases)
    refused = run_ftx("convert", str(tp), str(tmp_path / "hf"), "--to", "hf")
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr
    assert not (tmp_path / "hf").exists()
    result = run_ftx(
        "convert", str(tp), str(tmp_path / "hf"), "--to", "hf", "--trust-pickle", "--verify"
    )
    assert result.returncode == 0, result.stderr
    assert tensors(tmp_path / "hf") == tensors(model)
    # A set missing a rank is refused, naming the stage.
    (tp / "model_state.tp01_pp00.pdparams").unlink()
    shutil.copy(tp / "model_state.tp00_pp00.pdparams", tp / "model_state.tp02_pp00.pdparams")
    with pytest.raises(FtxError, match="ranks \\[0, 2\\]"):
        convert(tp, tmp_path / "again", "hf", trust_pickle=True)


@pytest.mark.env
def test_pdparams_are_written_for_paddle_and_read_back(tmp_path: Path, tiny_llama: Path) -> None:
    convert(tiny_llama, tmp_path / "pd", "paddle", file_format="pdparams", verify=True)
    loaded = run_in_env(PADDLENLP, PADDLE_LOAD, str(tmp_path / "pd/model_state.pdparams"))
    assert loaded["llama.layers.0.self_attn.q_proj.weight"][1] == [128, 128]
    assert loaded["llama.layers.0.self_attn.k_proj.weight"][1] == [128, 64]  # [in, out]
    convert(tmp_path / "pd", tmp_path / "hf", "hf", trust_pickle=True)
    assert tensors(tmp_path / "hf") == tensors(tiny_llama)


def test_a_pickle_that_builds_other_objects_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    import pickle

    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    with (folder / "model_state.pdparams").open("wb") as handle:
        pickle.dump({"llama.norm.weight": shutil.rmtree}, handle)
    with pytest.raises(FtxError, match="refusing to load shutil"):
        convert(folder, tmp_path / "out", "hf", trust_pickle=True)


TORCH_BIN = """
import json, sys, torch
from safetensors.torch import load_file
state = load_file(sys.argv[1] + "/model.safetensors")
state = {k: v.to(torch.bfloat16) if k.endswith("proj.weight") else v for k, v in state.items()}
legacy = sys.argv[3] == "legacy"  # torch's pre-1.6 (non-zip) format
torch.save(state, sys.argv[2] + "/pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
print(json.dumps({"n": len(state)}))
"""

TORCH_ENV_CONVERT = """
import json, subprocess, sys, os
ftx = os.path.join(os.path.dirname(sys.executable), "ftx")
done = subprocess.run([ftx, "convert", sys.argv[1], sys.argv[2], "--to", "mindspore", "--verify"],
                      capture_output=True, text=True)
print(json.dumps({"code": done.returncode, "err": done.stderr[-2000:]}))
"""


@pytest.mark.env
@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_pytorch_model_bin_is_read_with_torch_only(
    tmp_path: Path, tiny_llama: Path, kind: str
) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    assert run_in_env("torch", TORCH_BIN, str(tiny_llama), str(folder), kind)["n"] > 0
    without = run_ftx("convert", str(folder), str(tmp_path / "ms"), "--to", "mindspore")
    assert without.returncode == 2 and "needs torch" in without.stderr
    done = run_in_env("torch", TORCH_ENV_CONVERT, str(folder), str(tmp_path / "ms"))
    assert done["code"] == 0, done["err"]
    convert(tmp_path / "ms", tmp_path / "hf", "hf")
    got = tensors(tmp_path / "hf")
    assert got["model.layers.0.self_attn.q_proj.weight"][0] == "BF16"
    assert got["model.norm.weight"] == tensors(tiny_llama)["model.norm.weight"]


def test_mindspore_data_parallel_ranks_convert_and_sharded_ones_are_refused(
    tmp_path: Path, tiny_llama: Path
) -> None:
    convert(tiny_llama, tmp_path / "ms", "mindspore", file_format="ckpt")
    from ftx.core.convert.mindspore_ckpt import CkptReader

    model = CkptReader(tmp_path / "ms/model.ckpt")
    ranks = tmp_path / "ranks"
    for rank in (0, 1):
        (ranks / f"rank_{rank}").mkdir(parents=True)
        items = [(model.info(n), (lambda n=n: model.read(n))) for n in model.names]
        moment = model.info("model.norm_out.weight")
        items += [
            (TensorInfo("adam_m.model.norm_out.weight", "F32", moment.shape), lambda: np.ones(128)),
            (TensorInfo("global_step", "I32", (1,)), lambda: np.array([7])),
        ]
        for step in (5, 10):
            write_ckpt(ranks / f"rank_{rank}/llama_rank_{rank}-1_{step}.ckpt", items)
    shutil.copy(tmp_path / "ms/config.json", ranks)
    result = run_ftx("convert", str(ranks), str(tmp_path / "hf"), "--to", "hf", "--verify")
    assert result.returncode == 0, result.stderr
    assert tensors(tmp_path / "hf") == tensors(tiny_llama)  # optimizer state dropped
    (ranks / "strategy").mkdir()
    (ranks / "strategy/ckpt_strategy.ckpt").write_bytes(b"")
    refused = run_ftx("convert", str(ranks), str(tmp_path / "hf2"), "--to", "hf")
    assert refused.returncode == 2 and "transform_checkpoints" in refused.stderr
    shutil.rmtree(ranks / "strategy")
    half = [(TensorInfo(n, "F32", (1,)), lambda: np.zeros(1, np.float32)) for n in model.names]
    for old in (ranks / "rank_1").glob("*.ckpt"):
        old.unlink()
    write_ckpt(ranks / "rank_1/llama_rank_1-1_10.ckpt", half)
    with pytest.raises(FtxError, match="model-parallel slices"):
        convert(ranks, tmp_path / "hf3", "hf")
    assert json.loads((tmp_path / "hf/config.json").read_text())["model_type"] == "llama"


def test_a_mindformers_output_converts_with_its_training_yaml(
    tmp_path: Path, tiny_llama: Path
) -> None:
    import yaml

    convert(tiny_llama, tmp_path / "ms", "mindspore", file_format="ckpt")
    section = json.loads((tmp_path / "ms/config.json").read_text())["mindformers_model_config"]
    del section["intermediate_size"]  # MindFormers derives it: 2/3 * 4h rounded to multiple_of
    section.update(multiple_of=32, batch_size=1, seq_length=64, param_init_type="float32")
    (tmp_path / "finetune_llama.yaml").write_text(
        yaml.safe_dump({"run_mode": "finetune", "model": {"model_config": section}})
    )
    output = tmp_path / "output/checkpoint"
    (output / "rank_0").mkdir(parents=True)
    shutil.copy(tmp_path / "ms/model.ckpt", output / "rank_0/llama_rank_0-3_40.ckpt")
    missing = run_ftx("convert", str(output), str(tmp_path / "hf"), "--to", "hf")
    assert missing.returncode == 2 and "--config" in missing.stderr
    result = run_ftx(
        "convert",
        str(output),
        str(tmp_path / "hf"),
        "--to",
        "hf",
        "--config",
        str(tmp_path / "finetune_llama.yaml"),
    )
    assert result.returncode == 0, result.stderr
    assert tensors(tmp_path / "hf") == tensors(tiny_llama)
    config = json.loads((tmp_path / "hf/config.json").read_text())
    original = json.loads((tiny_llama / "config.json").read_text())
    for key in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "tie_word_embeddings",
    ):
        assert config[key] == original[key], key
    assert "mindformers_model_config" not in config
