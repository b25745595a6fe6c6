"""The ports of a sandbox host: the engine that knows the host's containers, and one runner per runtime.

A :class:`SandboxRunner` runs one sandbox with one container runtime (``runc`` for tier1, ``runsc``,
gVisor, for tier2); :mod:`symbi_sandbox_agent.docker_host` implements both on the Docker engine. Every
method blocks (the Docker SDK is synchronous): the daemon calls them on its own threads (:class:`Threads`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from symbi_sandbox_agent.domain import ExitState
from symbi_sandbox_agent.spec import HostCapabilities, SandboxSpec

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HostInfo:
    cpu_cores: float
    memory_mb: int
    docker_version: str
    runtimes: tuple[str, ...]
    capabilities: HostCapabilities


@dataclass(frozen=True, slots=True)
class OwnedContainer:
    id: str
    name: str
    task_id: str
    status: str


class SandboxRunner(Protocol):
    """One container runtime: create, feed, follow, pause, kill and remove one sandbox's container."""

    #: The runtime's name, as ``SandboxSpec.runtime`` names it.
    runtime: str
    #: Whether a run may leave runtime processes behind (gVisor's shim and sandbox after a failed start).
    leaves_processes: bool

    def create(self, spec: SandboxSpec, input_file: str) -> str:
        """Create the container (not started); its id."""
        ...

    def attach(self, container_id: str) -> Any:
        """The container's stdin/stdout/stderr socket; attach before start so no output is missed."""
        ...

    def start(self, container_id: str) -> None: ...

    def send_input(self, sock: Any, data: bytes) -> None:
        """Write the task's input and close stdin."""
        ...

    def send_line(self, sock: Any, line: bytes) -> None:
        """Write one reply line to stdin, which stays open."""
        ...

    def close_socket(self, sock: Any) -> None: ...

    def frames(self, sock: Any) -> Iterator[tuple[int, bytes]]:
        """``(stream, data)`` frames until the container's output ends (1 = stdout, 2 = stderr)."""
        ...

    def wait(self, container_id: str, timeout: float) -> ExitState: ...

    def pause(self, container_id: str) -> None: ...

    def unpause(self, container_id: str) -> None: ...

    def kill(self, container_id: str) -> None: ...

    def remove(self, container_id: str) -> None:
        """Stop (if needed) and remove the container; one already gone is fine."""
        ...


class SandboxEngine(Protocol):
    """The host's container engine: what it can run, which containers are this host's, what was left behind."""

    def info(self) -> HostInfo: ...

    def runner(self, runtime: str) -> SandboxRunner:
        """The runner of ``runtime`` (``runc`` or ``runsc``)."""
        ...

    def image_present(self, image: str) -> bool: ...

    def owned(self, host_id: str) -> list[OwnedContainer]:
        """Every container (running or not) labelled as this host's sandbox."""
        ...

    def remove(self, container_id: str) -> None: ...

    def leftover_processes(self) -> list[int]:
        """Pids of runtime processes whose container the engine no longer knows."""
        ...

    def kill_processes(self, pids: list[int]) -> list[int]: ...

    def close(self) -> None: ...


class Threads:
    """The daemon's own threads for the runners' blocking calls."""

    def __init__(self, workers: int = 16) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the threads and wait for it."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start ``fn(*args)`` on one of the threads without waiting for it."""
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
