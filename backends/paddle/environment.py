"""The paddle backend's local environment (also installed by its Docker image).

paddlepaddle 3.3.1 and paddlenlp 3.0.0b4 only work together with the pins in
the lock file (aistudio-sdk<0.3, datasets<3, pyarrow<17, numpy 1.26).
"""

from pathlib import Path

from ftx.core.envspec import EnvironmentSpec

ENVIRONMENT = EnvironmentSpec(
    name="paddle",
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("paddlepaddle", "paddlenlp", "numpy", "safetensors"),
    probe_module="ftx.backends.paddle.probe",
    import_check="import paddle, paddlenlp.transformers",
)
