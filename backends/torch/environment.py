"""The torch backend's local environment (also installed by its Docker image)."""

from pathlib import Path

from ftx.core.backend import EnvironmentSpec

ENVIRONMENT = EnvironmentSpec(
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("torch", "transformers", "peft", "accelerate", "safetensors", "numpy"),
    import_check="import torch, transformers, peft",
    devices="ftx.backends.torch.environment:visible_devices",
)


def visible_devices() -> list[str]:
    """CPU plus every CUDA device torch can see (runs inside the environment)."""
    import torch

    devices = ["cpu"]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    return devices
