"""The mindformers backend's local environment (also installed by its Docker image).

mindformers 1.9.0 pins mindspore~=2.9.0 and transformers==4.57.1.
"""

from pathlib import Path

from ftx.core.envspec import EnvironmentSpec

ENVIRONMENT = EnvironmentSpec(
    name="mindformers",
    lock_file=Path(__file__).with_name("requirements.lock"),
    frameworks=("mindspore", "mindformers", "numpy", "safetensors"),
    probe_module="ftx.backends.mindformers.probe",
    import_check="import mindspore, mindformers",
)
