#!/usr/bin/env bash
# Written by `ftx plan` for the mindformers backend. Runs with the python
# and launchers found on PATH (the backend's environment or image), in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOCAL_DEFAULT_PATH=native
export TOKENIZERS_PARALLELISM=false
exec python \
    -m \
    ftx.backends.mindformers.worker \
    plan/worker.json
