"""The first process of a backend container: runs OUT/plan/launch.sh and hands the
signals the engine delivers (docker stop, podman kill) to the launcher's process group.

    python -m ftx.core.runtime.inside OUT/plan/launch.sh
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ftx.core.runtime.process import supervise


def main() -> int:
    launch = Path(sys.argv[1])
    return supervise(
        ["bash", str(launch)],
        os.environ,
        launch.parent.parent,
        lambda line: print(line, end="", flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
