#!/usr/bin/env bash
# bench/gpu.py on a CUDA machine that has torch, transformers and peft but neither ftx nor
# a network (a lent GPU box, a cluster node without PyPI).
#
#   bash bench/gpu_device.sh wheels            # here, with PyPI: ftx and what the box lacks
#                                              # (pydantic's four wheels, the torch lock's
#                                              # versions) into .whl/
#   bash bench/gpu_device.sh run [ARGS...]     # there, from the checkout with .whl/ in it
#
# `run` installs the wheels into /tmp/ftx-site (the box's own packages untouched) and runs
# bench/gpu.py ARGS with FTX_IMAGE=torch: the box's python is the torch backend's
# environment, as in ftx's torch image.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=backends/torch/requirements.lock
PY=${PYTHON:-python3}

pin() { grep -i "^$1==" "$LOCK" | head -1; }

case "${1:-}" in
wheels)
    rm -rf .whl && mkdir -p .whl
    "$PY" -m pip wheel -q --no-deps -w .whl .
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" \
        "$(pin typing-inspection)"
    ls .whl
    ;;
run)
    shift
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ftx-site .whl/*.whl
    export PYTHONPATH=/tmp/ftx-site${PYTHONPATH:+:$PYTHONPATH}
    export FTX_IMAGE=torch PYTHONUNBUFFERED=1
    exec "$PY" bench/gpu.py "$@"
    ;;
*)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
