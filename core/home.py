"""Where ftx keeps what outlives a command: environments, prepared-data caches, images,
logs (``$FTX_HOME``, default ``~/.cache/ftx``). Standard library only: data preparation,
images and environments all find it here without importing each other."""

from __future__ import annotations

import os
from pathlib import Path


def ftx_home() -> Path:
    """Where ftx keeps environments and caches ($FTX_HOME, default ~/.cache/ftx)."""
    return Path(os.environ.get("FTX_HOME") or Path.home() / ".cache" / "ftx").expanduser()
