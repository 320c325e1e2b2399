"""Names of the MindFormers-native files in OUT/plan, shared by the translator, the
exporter that writes the plan's MindRecord data, and the worker. Paths are relative
to OUT (launch.sh, msrun and MindFormers' own trainer start there)."""

from ftx.core import plan

FINETUNE_YAML = "finetune.yaml"  # the MindFormers run config (run_mode: finetune)
WORKER_SCRIPT = "mindformers_worker.py"  # runs the worker module (msrun starts scripts)
PLAN_DATA = f"plan/{plan.PLAN_DATA}"  # written by ftx.backends.mindformers.export
TRAIN_RECORD = f"{PLAN_DATA}/train.mindrecord"  # rows of seq_length + 1: input_ids, labels
EVAL_RECORD = f"{PLAN_DATA}/val.mindrecord"  # the held-out split, when the recipe has one
MCORE_DATA = f"{PLAN_DATA}/mcore"  # {train,val}.jsonl for the MCore path's HFDataLoader
NATIVE_OUTPUT = "native"  # output_dir of MindFormers (logs, strategy, its checkpoints)
MSRUN_LOGS = "logs/msrun"  # scheduler.log and worker_N.log
