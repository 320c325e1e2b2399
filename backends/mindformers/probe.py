"""Report the mindformers environment's versions and visible devices (runs in that env)."""

import glob

from ftx.backends.mindformers.environment import ENVIRONMENT
from ftx.core.probe import report


def detect() -> list[str]:
    """CPU plus every Ascend NPU whose device node is present."""
    npus = sorted(p for p in glob.glob("/dev/davinci[0-9]*"))
    return ["cpu"] + [f"npu:{p.removeprefix('/dev/davinci')}" for p in npus]


if __name__ == "__main__":
    report(ENVIRONMENT.frameworks, detect)
