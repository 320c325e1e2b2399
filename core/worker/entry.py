"""A worker's entry point: read OUT/plan/worker.json, run, and turn what went wrong into
an exit code (2 for a config that breaks the contract) and OUT/error.json (any exception)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ftx.core.contract import (
    ContractError,
    ExitCode,
    RunLayout,
    WorkerConfig,
    WorkerFailure,
    write_record,
)


def run_worker(
    main: Callable[[WorkerConfig, RunLayout], int], argv: list[str] | None = None
) -> int:
    """Run a worker's ``main(config, layout)``: the exit code it returns, 2 for a config
    that breaks the contract, 1 (with OUT/error.json) for any exception."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m <worker> OUT/plan/worker.json", file=sys.stderr)
        return ExitCode.BAD_CONFIG
    path = Path(argv[0])
    layout = RunLayout.of_worker_config(path)
    try:
        return main(WorkerConfig.read(path), layout)
    except ContractError as exc:
        print(f"[ftx] error: {exc}", file=sys.stderr, flush=True)
        return ExitCode.BAD_CONFIG
    except Exception as exc:
        traceback.print_exc()
        record_failure(layout, exc)
        return ExitCode.FAILED


def record_failure(layout: RunLayout, exc: BaseException) -> None:
    """Write OUT/error.json for ``exc`` unless another rank already has."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    rank = int(os.environ.get("RANK", os.environ.get("PADDLE_TRAINER_ID", 0)))
    failure = WorkerFailure(type(exc).__name__, str(exc).strip()[:2000], where, rank)
    if not layout.error_json.exists():
        write_record(layout.error_json, failure)
