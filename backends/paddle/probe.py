"""Report the paddle environment's versions and visible devices (runs in that env)."""

from ftx.backends.paddle.environment import ENVIRONMENT
from ftx.core.probe import report


def detect() -> list[str]:
    """CPU plus every GPU paddle was compiled for and can see."""
    import paddle

    devices = ["cpu"]
    if paddle.device.is_compiled_with_cuda():
        devices += [f"gpu:{i}" for i in range(paddle.device.cuda.device_count())]
    return devices


if __name__ == "__main__":
    report(ENVIRONMENT.frameworks, detect)
