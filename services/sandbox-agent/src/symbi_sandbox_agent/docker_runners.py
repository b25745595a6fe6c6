"""The runc and runsc runners of the Docker engine (:class:`~symbi_sandbox_agent.docker_host.DockerHost`, which
the runners see only as the :class:`DockerEngine` they need, so neither module imports the other back).

:class:`RuncRunner` (tier1) and :class:`RunscRunner` (tier2, gVisor) are the engine's
:class:`~symbi_sandbox_agent.runner.SandboxRunner` s: they share its client and differ in the runtime they create
containers with, and in that a gVisor run may leave its shim and sandbox processes behind. Blocking, like the
engine: the daemon calls them on its own threads.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import docker.errors  # type: ignore[import-untyped]
from docker.utils.socket import frames_iter  # type: ignore[import-untyped]

from symbi_sandbox_agent.domain import ExitState
from symbi_sandbox_agent.spec import SandboxSpec
from symbi_sandbox_agent.stdio import AttachStream


class DockerEngine(Protocol):
    """What a runner uses of its engine: the low-level client, its bookkeeping, and removal."""

    api: Any
    #: Containers the engine's process created and has not removed, and which of them it paused.
    created: set[str]
    paused: set[str]

    def state(self, container_id: str) -> dict[str, Any]: ...

    def kill(self, container_id: str) -> None: ...

    def remove(self, container_id: str) -> None: ...


class DockerRunner:
    """One sandbox's container on the Docker engine, with the runtime :attr:`runtime`."""

    runtime = ""
    leaves_processes = False

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.api = engine.api

    def create(self, spec: SandboxSpec, input_file: str) -> str:
        if spec.runtime != self.runtime:
            raise ValueError(f"the {self.runtime} runner cannot run {spec.name}, which needs {spec.runtime}")
        host_config = self.api.create_host_config(**spec.host_config_kwargs(input_file))
        created = self.api.create_container(host_config=host_config, **spec.create_kwargs(input_file))
        self.engine.created.add(str(created["Id"]))
        return str(created["Id"])

    def attach(self, container_id: str) -> Any:
        """The container's stdin/stdout/stderr socket; attach before start so no output is missed."""
        sock = self.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        sock._sock.settimeout(None)  # a quiet workload is not an error; the daemon owns the timeout
        return sock

    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    def launch(self, spec: SandboxSpec, input_file: str, created: Callable[[str], None]) -> Any:
        """Create, attach and start the container: one thread hop for the daemon instead of three. ``created``
        learns the container's id as soon as it exists, so a failure after that still gets it removed."""
        container_id = self.create(spec, input_file)
        created(container_id)
        sock = self.attach(container_id)
        try:
            self.start(container_id)
        except BaseException:
            self.close_socket(sock)
            raise
        return sock

    @classmethod
    def stdio(cls, sock: Any) -> AttachStream:
        """The attach socket for the event loop (no output thread; see :mod:`symbi_sandbox_agent.stdio`)."""
        return AttachStream(sock._sock, release=lambda: cls.close_socket(sock))

    @staticmethod
    def send_input(sock: Any, data: bytes) -> None:
        """Write the task's input and close our side: the workload sees EOF on stdin.

        Closing stdin at once keeps the run simple; a workload with the action gateway keeps it open
        (replies arrive on it), and a large result still comes through under gVisor then (tested)."""
        raw: socket.socket = sock._sock
        try:
            if data:
                raw.sendall(data)
        except OSError:
            pass  # the workload exited without reading its input
        finally:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)

    @staticmethod
    def send_line(sock: Any, line: bytes) -> None:
        """Write one reply line to the workload's stdin (which stays open); a workload gone is not an error."""
        with contextlib.suppress(OSError):
            sock._sock.sendall(line)

    @staticmethod
    def close_socket(sock: Any) -> None:
        """Close the attach socket; shutting it down first wakes a writer still blocked on stdin."""
        with contextlib.suppress(Exception):
            sock._sock.shutdown(socket.SHUT_RDWR)
        for part in (sock, getattr(sock, "_sock", None), getattr(sock, "_response", None)):
            with contextlib.suppress(Exception):
                if part is not None:
                    part.close()

    @staticmethod
    def frames(sock: Any) -> Iterator[tuple[int, bytes]]:
        """``(stream, data)`` frames until the container's output ends (1 = stdout, 2 = stderr)."""
        try:
            for stream, data in frames_iter(sock, tty=False):
                if data:
                    yield int(stream), bytes(data)
        except OSError:
            return

    def wait(self, container_id: str, timeout: float) -> ExitState:
        try:
            result = self.api.wait(container_id, timeout=max(1, int(timeout)))
        except docker.errors.NotFound:
            return ExitState(None, False, "the container disappeared")
        except Exception as exc:  # requests' ReadTimeout and friends
            return ExitState(None, False, f"no exit status within {timeout} s: {exc}")
        code = result.get("StatusCode")
        error = (result.get("Error") or {}).get("Message", "") if isinstance(result.get("Error"), dict) else ""
        return self.exit_state(container_id, int(code) if code is not None else None, error)

    def exit_state(self, container_id: str, code: int | None, error: str = "") -> ExitState:
        """How the container ended, given its exit code. Only a run that did not succeed can have been OOM-killed
        as far as its outcome goes: a clean exit needs no inspect (one Docker API call per task less); neither
        the wait's answer nor the ``die`` event carries the flag."""
        oom = code != 0 and bool(self.engine.state(container_id).get("OOMKilled"))
        return ExitState(code, oom, error)

    def finish(self, container_id: str, timeout: float, exit_code: int | None = None) -> tuple[ExitState, str]:
        """Wait for the exit (unless its ``exit_code`` is known already), then remove the container: one thread
        hop. The exit state, and why the removal failed ('' when it did not)."""
        state = self.wait(container_id, timeout) if exit_code is None else self.exit_state(container_id, exit_code)
        try:
            self.remove(container_id)
        except Exception as exc:
            return state, str(exc) or type(exc).__name__
        return state, ""

    def pause(self, container_id: str) -> None:
        self.engine.paused.add(container_id)  # before: a pause that fails half-way still gets a thaw
        self.api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        self.api.unpause(container_id)
        self.engine.paused.discard(container_id)

    def kill(self, container_id: str) -> None:
        self.engine.kill(container_id)

    def remove(self, container_id: str) -> None:
        self.engine.remove(container_id)


class RuncRunner(DockerRunner):
    """tier1: the default OCI runtime."""

    runtime = "runc"


class RunscRunner(DockerRunner):
    """tier2: gVisor. A failed or hung sandbox can leave its shim and sandbox processes behind."""

    runtime = "runsc"
    leaves_processes = True


class RunscUdsRunner(RunscRunner):
    """tier2 with a channel socket: gVisor with ``--host-uds=open`` (the ``runsc-uds`` runtime)."""

    runtime = "runsc-uds"


RUNNERS: dict[str, type[DockerRunner]] = {"runc": RuncRunner, "runsc": RunscRunner, "runsc-uds": RunscUdsRunner}
