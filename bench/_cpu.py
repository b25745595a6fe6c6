"""Whose CPU a benchmark window used: process trees (with reaped children), cgroups, and the whole
machine's busy time from ``/proc``; a :class:`CpuTally` sums named windows."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from symbi_cli.runtime import LocalRuntime

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stats() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Every live process's children and its CPU seconds so far (own utime + stime and reaped children's)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK
    return children, cpu


def tree_cpu(roots: list[int], children: dict[int, list[int]], cpu: dict[int, float]) -> float:
    """CPU seconds of the live processes under ``roots`` (a child that exited is in its parent's figure)."""
    seen: set[int] = set()
    stack = [r for r in roots if r in cpu]
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children.get(pid, ()))
    return sum(cpu[p] for p in seen)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (``/proc/stat``: user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cgroup_cpu_seconds(relative: str) -> float:
    """CPU seconds charged to a cgroup and its (also removed) descendants; 0 if it does not exist yet."""
    relative = relative.strip("/")
    v1 = Path("/sys/fs/cgroup/cpuacct", relative, "cpuacct.usage")
    with contextlib.suppress(OSError, ValueError):
        return int(v1.read_text()) / 1e9
    v2 = Path("/sys/fs/cgroup", relative, "cpu.stat")
    with contextlib.suppress(OSError, ValueError):
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
    return 0.0


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(entry.path, "comm").read_text().strip() == name:
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class CpuSample:
    wall: float = 0.0
    busy: float = 0.0
    runtime: float = 0.0
    client: float = 0.0
    docker: float = 0.0
    sandboxes: float = 0.0

    def __add__(self, other: CpuSample) -> CpuSample:
        return CpuSample(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(*(a - b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[float, ...]:
        return (self.wall, self.busy, self.runtime, self.client, self.docker, self.sandboxes)

    @property
    def rest(self) -> float:
        return self.busy - self.runtime - self.client - self.docker - self.sandboxes


@dataclass
class CpuSources:
    """Whose CPU is counted as what: the runtime's process trees, Docker's daemons, the sandboxes' cgroups."""

    #: The runtime's processes by name: each service, ``nats-server``, ``postgres`` (each with its children).
    runtime_roots: dict[str, int]
    docker_roots: list[int]
    cgroups: list[str]

    @classmethod
    def of(cls, rt: LocalRuntime, cgroups: list[str]) -> CpuSources:
        state = rt.state()
        services = state["services"]
        entries = dict(services) if isinstance(services, dict) else {}
        entries |= {"nats-server": state.get("nats"), "postgres": state.get("postgres")}
        roots = {
            name: int(e["pid"]) for name, e in entries.items() if isinstance(e, dict) and isinstance(e.get("pid"), int)
        }
        return cls(roots, pids_named("dockerd") or pids_named("containerd"), cgroups)

    def sample(self) -> tuple[CpuSample, dict[str, float]]:
        """The totals, and the runtime's CPU by process."""
        children, cpu = proc_stats()
        parts = {name: tree_cpu([pid], children, cpu) for name, pid in self.runtime_roots.items()}
        total = CpuSample(
            wall=time.perf_counter(),
            busy=machine_busy_seconds(),
            runtime=sum(parts.values()),
            client=time.process_time(),
            docker=tree_cpu(self.docker_roots, children, cpu),
            sandboxes=sum(cgroup_cpu_seconds(c) for c in self.cgroups),
        )
        return total, parts


@dataclass
class CpuTally:
    """CPU used per named window (summed over its repetitions), in total and by runtime process."""

    totals: dict[str, CpuSample] = field(default_factory=dict)
    parts: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def window(self, sources: CpuSources, key: str) -> Iterator[None]:
        total0, parts0 = sources.sample()
        yield
        total1, parts1 = sources.sample()
        self.totals[key] = self.totals.get(key, CpuSample()) + (total1 - total0)
        mine = self.parts.setdefault(key, {})
        for name, value in parts1.items():
            mine[name] = mine.get(name, 0.0) + value - parts0.get(name, 0.0)
