"""The last lines of a log file, read from its end only (logs grow without bound until
rotated; an error message quotes what a process said last)."""

from __future__ import annotations

import os
from pathlib import Path


def tail_lines(path: Path, lines: int, window: int = 16384) -> list[str]:
    """The last ``lines`` non-empty lines within the file's last ``window`` bytes,
    right-stripped; ``[]`` if the file cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - window))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
