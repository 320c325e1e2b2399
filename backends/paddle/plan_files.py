"""Names of the Paddle-native files in OUT/plan, shared by the translator, the exporter
that writes the plan's data, and the worker. Paths are relative to OUT (launch.sh and
`paddleformers-cli train` start there)."""

from ftx.core import plan

PADDLEFORMERS_YAML = "paddleformers.yaml"  # for `paddleformers-cli train`
RUN_FINETUNE_JSON = "run_finetune.json"  # for PaddleNLP 3.0's llm/run_finetune.py
WORKER_SCRIPT = "paddle_worker.py"  # runs the worker module (the launcher starts scripts)
LORA_CONFIG = "lora/lora_config.json"  # LoRA settings both read through lora_path

PLAN_DATA = f"plan/{plan.PLAN_DATA}"  # written by ftx.backends.paddle.export:export_plan_data
MESSAGES = f"{PLAN_DATA}/messages"  # {train,eval}.jsonl in PaddleFormers' messages format
ERNIEKIT = f"{PLAN_DATA}/erniekit"  # {train,eval}.jsonl, src/tgt (or text for pre-training)
PADDLENLP = f"{PLAN_DATA}/paddlenlp"  # train.json, dev.json, chat_template.json
TEMPLATE_MODULE = f"{PLAN_DATA}/ftx_template.py"  # registers the recipe's template by name
NATIVE_OUTPUT = "native"  # output_dir of a native (paddleformers-cli) run, inside OUT


def template_name(template: str) -> str:
    """The name the plan registers ftx's template under in PaddleFormers."""
    return f"ftx_{template}"
