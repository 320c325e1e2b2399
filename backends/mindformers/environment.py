"""The mindformers backend's local environment (also installed by its Docker image).

mindformers 1.9.0 pins mindspore~=2.9.0 and transformers==4.57.1.
"""

import glob
from pathlib import Path

from ftx.core.backend import EnvironmentSpec, ImageVariant

ENVIRONMENT = EnvironmentSpec(
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("mindspore", "mindformers", "numpy", "safetensors"),
    import_check="import mindspore, mindformers",
    devices="ftx.backends.mindformers.environment:visible_devices",
    footprint="about 3.4 GB on disk and 2 minutes (measured on a 2-core CPU machine)",
    images={
        "cpu": ImageVariant(),
        "ascend": ImageVariant(
            base="quay.io/ascend/cann:9.0.0-910b-ubuntu22.04-py3.11",
            devices="ascend",
            note="CANN 9.0.0 (what MindSpore 2.9.0 / MindFormers 1.9.0 are released for)",
        ),
    },
)


def visible_devices() -> list[str]:
    """CPU plus every Ascend NPU whose device node is present."""
    npus = sorted(glob.glob("/dev/davinci[0-9]*"))
    return ["cpu"] + [f"npu:{p.removeprefix('/dev/davinci')}" for p in npus]
