"""A sandbox's cgroup: usage read straight from its files, and removing the tree when it is done.

Reading the cgroup files is cheap enough to sample several times a second and still works a moment
before the container exits (the Docker stats API needs about a second per sample).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from symbi_contracts.sandbox_agent.events import Usage

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str:
    """A control file's text: plain reads, no text-mode machinery (a sample reads three of them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = [os.read(fd, 65536)]
        while parts[-1]:
            parts.append(os.read(fd, 65536))
        return b"".join(parts).decode()
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


#: The exit status of a process killed by SIGKILL.
SIGKILL_STATUS = 128 + 9


class CgroupUsage:
    """A sandbox's usage, read from its own parent cgroup (see ``SandboxSpec.cgroup_parent``).

    The container's cgroup disappears the moment it exits, taking its peak memory with it; the parent
    cgroup accounts for it hierarchically and stays until :meth:`release`, so the final figures are exact
    even for a workload that is OOM-killed within milliseconds. Works with cgroup v1 and v2."""

    def __init__(self, parent: str, root: Path = CGROUP_ROOT) -> None:
        self.parent = parent.strip("/")
        self.root = root
        self.v2 = _is_v2(root)
        self.last = Usage()
        # The files read per sample, named once (a sample is a few reads, no path building).
        if self.v2:
            base = root / self.parent
            self._peak, self._cpu, self._io = base / "memory.peak", base / "cpu.stat", base / "io.stat"
            self._current = base / "memory.current"
        else:
            self._peak = root / "memory" / self.parent / "memory.max_usage_in_bytes"
            self._cpu = root / "cpuacct" / self.parent / "cpuacct.usage"
            self._io = root / "blkio" / self.parent / "blkio.throttle.io_service_bytes_recursive"

    def sample(self) -> Usage:
        usage = self._sample_v2() if self.v2 else self._sample_v1()
        if usage is not None:
            self.last = Usage(
                peak_memory_bytes=max(usage.peak_memory_bytes, self.last.peak_memory_bytes),
                cpu_seconds=max(usage.cpu_seconds, self.last.cpu_seconds),
                io_read_bytes=max(usage.io_read_bytes, self.last.io_read_bytes),
                io_write_bytes=max(usage.io_write_bytes, self.last.io_write_bytes),
            )
        return self.last

    def _sample_v1(self) -> Usage | None:
        peak = _read_int(self._peak)
        cpu_ns = _read_int(self._cpu)
        if peak is None and cpu_ns is None:
            return None
        read = write = 0
        try:
            lines = _read(self._io).splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Read":
                read += int(parts[2])
            elif len(parts) == 3 and parts[1] == "Write":
                write += int(parts[2])
        return Usage(
            peak_memory_bytes=peak or 0, cpu_seconds=(cpu_ns or 0) / 1e9, io_read_bytes=read, io_write_bytes=write
        )

    def _sample_v2(self) -> Usage | None:
        peak = _read_int(self._peak) or _read_int(self._current)
        cpu_us = 0
        try:
            for line in _read(self._cpu).splitlines():
                if line.startswith("usage_usec "):
                    cpu_us = int(line.split()[1])
            io = _read(self._io)
        except OSError:
            return None
        read = sum(int(x.split("=")[1]) for x in io.split() if x.startswith("rbytes="))
        write = sum(int(x.split("=")[1]) for x in io.split() if x.startswith("wbytes="))
        return Usage(peak_memory_bytes=peak or 0, cpu_seconds=cpu_us / 1e6, io_read_bytes=read, io_write_bytes=write)

    def oom_killed(self) -> bool:
        """Whether the kernel OOM-killed a process of the sandbox (``oom_kill`` of the parent's memory events,
        which count its containers'). Docker's own ``OOMKilled`` flag is known to miss some under cgroup v2."""
        events = (
            self.root / self.parent / "memory.events"
            if self.v2
            else self.root / "memory" / self.parent / "memory.oom_control"
        )
        try:
            lines = _read(events).splitlines()
        except OSError:
            return False
        return any(line.startswith("oom_kill ") and int(line.split()[1]) > 0 for line in lines)

    def out_of_memory(self, exit_code: int | None, *, killed_here: bool, limit_mb: int) -> bool:
        """Whether a run that failed with ``exit_code`` was killed for memory: the kernel's OOM-kill count
        (:meth:`oom_killed`), or a SIGKILL the daemon did not send (``killed_here``) once the peak reached the
        memory limit — gVisor's sentry may kill within the limit itself, before the host kernel counts anything."""
        if self.oom_killed():
            return True
        if exit_code != SIGKILL_STATUS or killed_here:
            return False
        return self.sample().peak_memory_bytes >= limit_mb * 1024 * 1024

    def release(self) -> None:
        """Remove the parent cgroup (in every v1 hierarchy); call after the container is removed."""
        remove_cgroup_tree(self.parent, self.root)


def remove_cgroup_tree(relative: str, root: Path = CGROUP_ROOT) -> None:
    """rmdir ``relative`` (and any empty cgroups under it) in every hierarchy where it exists."""
    relative = relative.strip("/")
    for base in _hierarchies(root):
        top = os.path.join(base, relative)
        try:
            os.rmdir(top)  # a sandbox's cgroup is usually a leaf by now: one call per hierarchy
            continue
        except FileNotFoundError:
            continue
        except OSError:
            pass  # not empty (cgroups under it), or not a directory
        if not os.path.isdir(top):
            continue
        # Deepest first; os.walk reads each directory once (no stat of every control file, as rglob did).
        for path, _dirs, _files in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(path)


@functools.cache
def _is_v2(root: Path) -> bool:
    return (root / "cgroup.controllers").exists()


@functools.cache
def _hierarchies(root: Path) -> tuple[str, ...]:
    """The cgroup hierarchies mounted under ``root`` (v2: ``root`` itself); they do not change while we run."""
    if _is_v2(root):
        return (str(root),)
    return tuple(dict.fromkeys(os.path.realpath(p) for p in sorted(root.iterdir()) if p.is_dir()))
