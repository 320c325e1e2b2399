#!/usr/bin/env bash
# Written by `ftx plan` for the mindformers backend. Runs with the python
# and launchers found on PATH (the backend's environment or image), in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOCAL_DEFAULT_PATH=native
export TOKENIZERS_PARALLELISM=false
exec msrun \
    --worker_num \
    8 \
    --local_worker_num \
    8 \
    --master_port \
    29500 \
    --log_dir \
    logs/msrun \
    --join \
    True \
    --cluster_time_out \
    600 \
    plan/mindformers_worker.py \
    plan/worker.json
