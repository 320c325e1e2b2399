"""The paddle backend's local environment (also installed by its Docker image).

PaddleFormers 1.2.0 on paddlepaddle 3.3.1: the lock's comments say which pins
make them import and train together, and what the GPU variant adds.
"""

from pathlib import Path

from ftx.core.backend import EnvironmentSpec, ImageVariant

ENVIRONMENT = EnvironmentSpec(
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("paddlepaddle", "paddleformers", "transformers", "numpy", "safetensors"),
    import_check=(
        "import paddle, paddleformers.transformers, paddleformers.trainer, paddleformers.peft"
    ),
    devices="ftx.backends.paddle.environment:visible_devices",
    footprint="about 2.1 GB on disk and 2 minutes (measured on a 2-core CPU machine)",
    images={
        "cpu": ImageVariant(),
        "cuda": ImageVariant(
            devices="gpu",
            replace={"paddlepaddle==3.3.1": "paddlepaddle-gpu==3.3.1\npaddlefleet==0.3.0"},
            index="https://www.paddlepaddle.org.cn/packages/stable/cu126/",
            note="the lock's comments: paddlepaddle-gpu and PaddleFleet from Paddle's index",
        ),
    },
)


def visible_devices() -> list[str]:
    """CPU plus every GPU paddle was compiled for and can see (runs inside the environment)."""
    import paddle

    devices = ["cpu"]
    if paddle.device.is_compiled_with_cuda():
        devices += [f"gpu:{i}" for i in range(paddle.device.cuda.device_count())]
    return devices
