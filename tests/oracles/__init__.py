"""Test-only oracle environments: older framework releases whose own loaders and
parsers check what ftx writes. Users never install them.

    paddlenlp/requirements.lock   paddlepaddle 3.3.1 + paddlenlp 3.0.0b4 (PaddleNLP's
                                  loaders and llm/run_finetune.py's argument parser)
    trl/requirements.lock         the torch backend's lock + trl 1.16.0 (TRL's DPOTrainer,
                                  KTOTrainer, RewardTrainer: the preference losses' oracle),
                                  layered on the torch environment (only TRL and the
                                  data libraries it imports are installed)
    llamacpp/requirements.lock    llama-cpp-python 0.3.36 (llama.cpp built from source on
                                  install): reads what `ftx export --to gguf` writes
"""

from pathlib import Path

from ftx.core.backend import EnvironmentSpec

PADDLENLP = "paddlenlp-oracle"
TRL = "trl-oracle"
LLAMACPP = "llamacpp-oracle"

ORACLES = {
    PADDLENLP: EnvironmentSpec(
        lock_file=Path(__file__).with_name("paddlenlp") / "requirements.lock",
        frameworks=("paddlepaddle", "paddlenlp", "numpy", "safetensors"),
        import_check="import paddle, paddlenlp.transformers, paddlenlp.trl",
        devices="ftx.backends.paddle.environment:visible_devices",
    ),
    TRL: EnvironmentSpec(
        lock_file=Path(__file__).with_name("trl") / "requirements.lock",
        frameworks=("torch", "transformers", "peft", "trl"),
        import_check="import trl, torch, peft",
        devices="ftx.backends.torch.environment:visible_devices",
        base="torch",
    ),
    LLAMACPP: EnvironmentSpec(
        lock_file=Path(__file__).with_name("llamacpp") / "requirements.lock",
        frameworks=("llama_cpp_python", "numpy"),
        import_check="import llama_cpp",
        devices="ftx.core.inventory:cpu_only",
    ),
}
