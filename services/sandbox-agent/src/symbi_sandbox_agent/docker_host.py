"""The Docker side of a host: capabilities, containers and clean-up.

:class:`DockerHost` is the engine (:class:`~symbi_sandbox_agent.runner.SandboxEngine`): what it can run,
the containers labelled as this host's, runtime processes left behind; its runners, one per runtime, are in
:mod:`symbi_sandbox_agent.docker_runners`. Everything here is blocking (the Docker SDK is synchronous); the
daemon calls it on its own threads.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
from symbi_common.block_devices import block_device_of
from symbi_contracts.sandbox_agent.errors import DockerUnavailable

from symbi_sandbox_agent.docker_runners import RUNNERS
from symbi_sandbox_agent.runner import HostInfo, OwnedContainer, SandboxRunner
from symbi_sandbox_agent.spec import LABEL_HOST, LABEL_TASK, HostCapabilities

#: Docker Engine API 1.41 = Docker 20.10, the oldest engine this daemon is tested with; newer engines serve it too.
API_VERSION = "1.41"
#: How long a present image is taken as present without asking the engine again.
IMAGE_SEEN_S = 30.0
_CONTAINER_ID = re.compile(r"\b[0-9a-f]{64}\b")


def _one_pool_per_socket(api: Any) -> None:
    """Let every request reuse the pooled connections to the engine's unix socket.

    docker-py's unix adapter keys its connection pools by the full request URL, which names the
    container, so each call about a new container opened a new connection (and a new pool, closed
    again when evicted): about a third of the sandbox-agent's CPU per task went to connecting and
    closing. All requests go to the same socket, so one pool serves them all. Nor does a unix socket
    go through a proxy: requests' look-up of proxy settings in the environment (each request) is off.
    Other transports (tcp, ssh) are left as they are."""
    adapter = getattr(api, "_custom_adapter", None)
    if adapter is None or not hasattr(adapter, "socket_path"):
        return
    api.trust_env = False
    get_connection = adapter.get_connection

    def shared(_url: str, proxies: Any = None) -> Any:
        return get_connection("http+docker://localhost", proxies)

    adapter.get_connection = shared


class DockerHost:
    """One Docker engine (``base_url`` empty: the environment's, usually ``/var/run/docker.sock``)."""

    def __init__(self, base_url: str = "", timeout: float = 30.0) -> None:
        url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if url.startswith("unix://"):
            # Checked here first: the SDK leaks its socket when a unix socket does not answer.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(timeout)
                try:
                    probe.connect(url.removeprefix("unix://"))
                except OSError as exc:
                    raise DockerUnavailable(
                        f"cannot reach the Docker engine at {url}: {exc}; on a sandbox host run deploy/host/setup-docker.sh"
                    ) from None
        client = None
        try:
            # A fixed API version: version detection in the constructor leaks its socket when the engine is down.
            client = (
                docker.DockerClient(base_url=base_url, timeout=int(timeout), version=API_VERSION)
                if base_url
                else docker.from_env(timeout=int(timeout), version=API_VERSION)
            )
            client.ping()
        except docker.errors.DockerException as exc:
            if client is not None:
                client.close()
            raise DockerUnavailable(
                f"cannot reach the Docker engine ({base_url or 'from the environment'}): {exc}; "
                "on a sandbox host run deploy/host/setup-docker.sh"
            ) from None
        self.client = client
        self.api = client.api
        _one_pool_per_socket(self.api)
        #: Containers this process created and has not removed, and which of them it paused: for these it
        #: knows whether a thaw is needed before removal without asking the engine.
        self.created: set[str] = set()
        self.paused: set[str] = set()
        #: image → until when (monotonic) its presence is taken as known.
        self._images: dict[str, float] = {}

    def close(self) -> None:
        self.client.close()

    def runner(self, runtime: str) -> SandboxRunner:
        """The runner of ``runtime``; :class:`KeyError` for one this daemon has no runner for."""
        return RUNNERS[runtime](self)

    # --- the host ---------------------------------------------------------------------------------

    def info(self) -> HostInfo:
        info = self.api.info()
        runtimes = tuple(sorted(info.get("Runtimes") or {}))
        caps = HostCapabilities(
            runtimes=frozenset(runtimes),
            blkio_device=block_device_of(info.get("DockerRootDir") or "/var/lib/docker"),
        )
        return HostInfo(
            cpu_cores=float(info.get("NCPU") or os.cpu_count() or 1),
            memory_mb=int(info.get("MemTotal") or 0) // (1024 * 1024),
            docker_version=str(info.get("ServerVersion", "")),
            runtimes=runtimes,
            capabilities=caps,
        )

    def image_present(self, image: str) -> bool:
        """Whether the engine has ``image``; a positive answer is reused for ``IMAGE_SEEN_S`` (a task whose
        image is deleted meanwhile fails at create instead of being refused: images are never pulled)."""
        if self.image_known(image):
            return True
        try:
            self.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            self._images.pop(image, None)
            return False
        self._images[image] = time.monotonic() + IMAGE_SEEN_S
        return True

    def image_known(self, image: str) -> bool:
        """Whether ``image`` was seen present less than ``IMAGE_SEEN_S`` ago (no I/O)."""
        return self._images.get(image, 0.0) > time.monotonic()

    def die_events(self, host_id: str, since: int) -> Iterator[dict[str, Any]]:
        """The engine's ``die`` events of this host's containers since ``since`` (Unix time), as they come;
        the stream blocks while none come and ends when closed (``close()``) or when the engine goes away."""
        filters = {"type": ["container"], "event": ["die"], "label": [f"{LABEL_HOST}={host_id}"]}
        return self.api.events(since=since, filters=filters, decode=True)  # type: ignore[no-any-return]

    def state(self, container_id: str) -> dict[str, Any]:
        try:
            return dict(self.api.inspect_container(container_id)["State"])
        except docker.errors.NotFound:
            return {}

    def kill(self, container_id: str) -> None:
        """SIGKILL the container; a paused one is thawed first (gVisor cannot kill a frozen sandbox)."""
        try:
            if self.state(container_id).get("Paused"):
                self.api.unpause(container_id)
                self.paused.discard(container_id)
            self.api.kill(container_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "is not running" not in str(exc):
                raise

    def remove(self, container_id: str) -> None:
        """Stop (if needed) and remove the container; a container that is already gone is fine.

        ``force`` kills a running container; a paused one is thawed first (gVisor cannot kill a frozen
        sandbox). A container this process created and did not pause needs no inspect first; if its
        removal fails anyway (paused by someone else), it is inspected, thawed and removed."""
        try:
            if container_id in self.created and container_id not in self.paused:
                try:
                    self.api.remove_container(container_id, force=True)
                    return
                except docker.errors.NotFound:
                    raise
                except docker.errors.APIError:
                    pass  # paused by someone else, …: inspect, thaw and remove as below
            if self.state(container_id).get("Paused"):
                self.api.unpause(container_id)
            self.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc) and "No such container" not in str(exc):
                raise
        finally:
            self.created.discard(container_id)
            self.paused.discard(container_id)

    # --- clean-up -------------------------------------------------------------------------------

    def owned(self, host_id: str) -> list[OwnedContainer]:
        """Every container (running or not) labelled as this host's sandbox."""
        found = self.api.containers(all=True, filters={"label": f"{LABEL_HOST}={host_id}"})
        return [
            OwnedContainer(
                id=c["Id"],
                name=(c.get("Names") or ["?"])[0].lstrip("/"),
                task_id=(c.get("Labels") or {}).get(LABEL_TASK, ""),
                status=str(c.get("State", "")),
            )
            for c in found
        ]

    def leftover_processes(self) -> list[int]:
        """Pids of container shims and gVisor processes whose container Docker no longer knows.

        A failed ``runsc`` start (or a container removed while its sandbox hung) can leave its
        ``containerd-shim`` and ``runsc`` sandbox/gofer processes behind; nothing else would reap them."""
        known = {c["Id"] for c in self.api.containers(all=True)}
        candidates: dict[int, set[str]] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            exe = os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else ""
            if not (exe.startswith("containerd-shim") or exe.startswith("runsc")):
                continue
            args = b" ".join(argv).decode(errors="replace")
            if exe.startswith("containerd-shim") and "moby" not in args:
                continue
            ids = set(_CONTAINER_ID.findall(args))
            if ids and not ids & known:
                candidates[int(proc.name)] = ids
        if not candidates:
            return []
        # A container created by another daemon after the first listing has a new shim: list again.
        known = {c["Id"] for c in self.api.containers(all=True)}
        return sorted(pid for pid, ids in candidates.items() if not ids & known)

    @staticmethod
    def kill_processes(pids: list[int]) -> list[int]:
        killed = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                continue
        return killed
