"""The torch backend's local environment (also installed by its Docker image)."""

from pathlib import Path

from ftx.core.envspec import EnvironmentSpec

ENVIRONMENT = EnvironmentSpec(
    name="torch",
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("torch", "transformers", "peft", "accelerate", "safetensors", "numpy"),
    probe_module="ftx.backends.torch.probe",
    import_check="import torch, transformers, peft",
)
