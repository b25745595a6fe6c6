"""Files of the embedded vector stores are private to the service's user: directories 0700, files 0600."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` created if missing (with its missing parents) and made 0700; returns it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def restrict_tree(path: Path) -> None:
    """Take group and other permissions off everything under ``path`` (an engine may create files 0644)."""
    if not path.exists():
        return
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
        for f in files:
            full = os.path.join(root, f)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode & 0o700)
    path.chmod(0o700)
