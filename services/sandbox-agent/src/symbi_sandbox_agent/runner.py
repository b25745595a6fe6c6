"""The ports of a sandbox host: the engine that knows the host's containers, and one runner per runtime.

A :class:`SandboxRunner` runs one sandbox with one container runtime (``runc`` for tier1, ``runsc``,
gVisor, for tier2); :mod:`symbi_sandbox_agent.docker_host` (the engine) and
:mod:`symbi_sandbox_agent.docker_runners` (its runners) implement both on the Docker engine. Every
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
from symbi_sandbox_agent.stdio import AttachStream

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

    def launch(self, spec: SandboxSpec, input_file: str, created: Callable[[str], None]) -> Any:
        """Create, attach and start the container (attached before it starts, so no output is missed); its
        attach socket. ``created`` is called with the container's id as soon as it exists."""
        ...

    def stdio(self, sock: Any) -> AttachStream:
        """The attach socket for the event loop: stdin written, stdout/stderr frames read."""
        ...

    def close_socket(self, sock: Any) -> None:
        """Close an attach socket that will not be used (its launch was given up)."""
        ...

    def finish(self, container_id: str, timeout: float, exit_code: int | None = None) -> tuple[ExitState, str]:
        """Wait for the exit (unless its ``exit_code`` is known already), then remove the container: the exit
        state, and why the removal failed ('' if not)."""
        ...

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

    def die_events(self, host_id: str, since: int) -> Iterator[dict[str, Any]]:
        """The engine's ``die`` events of this host's containers since ``since`` (Unix time), as they come
        (blocking; the stream has a ``close()``)."""
        ...

    def image_known(self, image: str) -> bool:
        """Whether ``image`` is known to be present without asking the engine (no I/O: no thread needed)."""
        ...

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


async def sweep_leftovers(engine: SandboxEngine, threads: Threads) -> list[int]:
    """Kill runtime processes of containers the engine no longer knows, until a scan finds none (a killed
    shim's runtime may still be spawning helpers while it dies)."""
    killed: list[int] = []
    for _ in range(5):
        found = await threads(engine.kill_processes, await threads(engine.leftover_processes))
        if not found:
            break
        killed.extend(found)
        await asyncio.sleep(0.3)
    return killed
