"""The paddle backend's local environment (also installed by its Docker image).

paddlepaddle 3.3.1 and paddlenlp 3.0.0b4 only work together with the pins in
the lock file (aistudio-sdk<0.3, datasets<3, pyarrow<17, numpy 1.26).
"""

from pathlib import Path

from ftx.core.backend import EnvironmentSpec

ENVIRONMENT = EnvironmentSpec(
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("paddlepaddle", "paddlenlp", "numpy", "safetensors"),
    import_check="import paddle, paddlenlp.transformers",
    devices="ftx.backends.paddle.environment:visible_devices",
)


def visible_devices() -> list[str]:
    """CPU plus every GPU paddle was compiled for and can see (runs inside the environment)."""
    import paddle

    devices = ["cpu"]
    if paddle.device.is_compiled_with_cuda():
        devices += [f"gpu:{i}" for i in range(paddle.device.cuda.device_count())]
    return devices
