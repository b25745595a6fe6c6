"""Files and directories for their owner only: the runtime's home, logs and secrets are never readable by others."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) for its owner only: 0700, also when it already existed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_private_log(path: Path) -> IO[bytes]:
    """Open ``path`` for appending, created 0600 (and narrowed to 0600 if it was wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")
