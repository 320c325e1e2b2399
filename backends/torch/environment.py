"""The torch backend's local environment (also installed by its Docker image)."""

from pathlib import Path

from ftx.core.backend import EnvironmentSpec, ImageVariant

ENVIRONMENT = EnvironmentSpec(
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("torch", "transformers", "peft", "accelerate", "safetensors", "numpy"),
    import_check="import torch, transformers, peft",
    devices="ftx.backends.torch.environment:visible_devices",
    footprint="about 1.5 GB on disk and 2 minutes (measured on a 2-core CPU machine)",
    images={
        "cpu": ImageVariant(),
        "cuda": ImageVariant(
            devices="gpu",
            replace={"torch==2.13.0+cpu": "torch==2.13.0+cu126"},
            index="https://download.pytorch.org/whl/cu126",
            note="torch's CUDA 12.6 wheel and the nvidia-* runtime wheels it depends on",
        ),
    },
)


def visible_devices() -> list[str]:
    """CPU plus every CUDA device torch can see (runs inside the environment)."""
    import torch

    devices = ["cpu"]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    return devices
