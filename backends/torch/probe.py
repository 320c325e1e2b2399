"""Report the torch environment's versions and visible devices (runs in that env)."""

from ftx.backends.torch.environment import ENVIRONMENT
from ftx.core.probe import report


def detect() -> list[str]:
    """CPU plus every CUDA device torch can see."""
    import torch

    devices = ["cpu"]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    return devices


if __name__ == "__main__":
    report(ENVIRONMENT.frameworks, detect)
