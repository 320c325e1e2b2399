#!/usr/bin/env bash
# Written by `ftx plan` for the paddle backend. Runs with the python
# and launchers found on PATH (the backend's environment or image), in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false
exec python \
    -m \
    ftx.backends.paddle.worker \
    plan/worker.json
