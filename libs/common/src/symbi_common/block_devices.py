"""The block device behind a path, for disk IO limits (Docker's blkio) and for handing it to a container."""

from __future__ import annotations

import os
from pathlib import Path


def block_device_of(path: str) -> str | None:
    """``/dev/<disk>`` holding ``path`` (the whole disk for a partition), or None if there is none."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    sys_dir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys_dir.exists():
        return None  # overlay, tmpfs, NFS …: no block device to throttle
    if (sys_dir / "partition").exists():
        sys_dir = sys_dir.resolve().parent
    try:
        uevent = (sys_dir / "uevent").read_text()
    except OSError:
        return None
    names = [line.split("=", 1)[1] for line in uevent.splitlines() if line.startswith("DEVNAME=")]
    return f"/dev/{names[0]}" if names and os.path.exists(f"/dev/{names[0]}") else None
