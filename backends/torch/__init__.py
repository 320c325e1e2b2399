"""The torch backend: transformers + peft (+ DeepSpeed ZeRO), launched with torchrun.

translate.py     recipe -> worker.json, peft_config.json, ds_config.json, launch.sh (pure)
worker.py        the training loop, run inside the torch environment
decode.py        the decoder of ftx generate/chat/eval/serve: transformers' logits
capabilities.py  what it trains, and the native keys of ``backends.torch`` it honours
environment.py   its pinned environment (requirements.lock) and device detection
"""

from ftx.backends.torch.capabilities import CAPABILITIES, OVERRIDES
from ftx.backends.torch.environment import ENVIRONMENT
from ftx.core.backend import BackendSpec

SPEC = BackendSpec(
    name="torch",
    description="PyTorch: transformers + peft + DeepSpeed",
    launcher="torchrun",
    environment=ENVIRONMENT,
    capabilities=CAPABILITIES,
    translator="ftx.backends.torch.translate:translate",
    worker="ftx.backends.torch.worker",
    decoder="ftx.backends.torch.decode",
    decoder_adapters=True,
    overrides=OVERRIDES,
)
