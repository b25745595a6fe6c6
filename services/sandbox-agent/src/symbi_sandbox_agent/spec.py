"""One sandbox's container specification: limits and hardening, and the checks that refuse a task. Pure.

Every sandbox gets: no network (``network_mode none``: no route out). A task whose definition allows
network access (and a network IO limit above 0) reaches the outside only through its egress proxy, the
socket ``egress.sock`` in its channel directory (docs/network.md): its command runs under the SDK's
forwarder (``python3 -m symbi_agent.forward -- <command>``), which ``HTTP(S)_PROXY`` point at on the
container's own loopback. Then a read-only root
filesystem with a small ``noexec`` tmpfs at ``/tmp``, all capabilities dropped, no-new-privileges,
a non-root user, a pids limit (at least 128 under gVisor, whose own threads count against it),
memory without swap, CPU quota, disk read/write bandwidth on the device behind Docker's storage
(blkio), no log driver (output is streamed from the attach socket and capped), and a hard timeout
enforced by the daemon. A workload with the action gateway also gets its channel directory (its own
host directory holding the Unix socket its gateway serves) mounted at ``/symbi/run``; under gVisor that needs
the ``runsc-uds`` runtime (runsc with ``--host-uds=open``), and without it the run keeps stdio as its channel.
The agent's filesystem grants, checked and decided (:mod:`.grants`, :mod:`.mounts`), are bind mounts at
``/symbi/data/<root>/…``, read-only unless granted write (Docker's ``ReadOnly``, honoured by runc and gVisor).
The secrets policy allowed (:mod:`.secret_refs`, :mod:`.secret_files`) are files in a host tmpfs directory
bound read-only at ``/symbi/secrets``; a ``vault://`` environment value becomes the file's path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from symbi_common.caps import lower_to_caps
from symbi_common.errors import ValidationError
from symbi_contracts.agent_protocol import CHANNEL_MOUNT, EGRESS_SOCKET_ENV, EGRESS_SOCKET_NAME, SOCKET_ENV, SOCKET_NAME
from symbi_contracts.lifecycle.config import Messaging
from symbi_contracts.sandbox_agent.errors import InvalidWorkload, LimitNotEnforceable, TierUnavailable
from symbi_contracts.sandbox_agent.events import Limits
from symbi_contracts.sandbox_agent.risk import Tier, parse_tier

from symbi_sandbox_agent.egress.rules import AllowList, BadTarget
from symbi_sandbox_agent.grants import DataMount
from symbi_sandbox_agent.secret_refs import SECRETS_MOUNT, env_with_secret_paths, requested_secrets
from symbi_sandbox_agent.tasks import TaskView

RUNTIMES: dict[Tier, str] = {"tier1": "runc", "tier2": "runsc"}
#: gVisor with ``--host-uds=open``: a Tier 2 sandbox may connect to its channel socket (deploy/host/setup-docker.sh).
UDS_RUNTIME = "runsc-uds"
#: gVisor's sentry and gofer threads count against the pids limit; below this a sandbox dies.
GVISOR_MIN_PIDS = 128
MIN_MEMORY_MB = 16
INPUT_PATH = "/symbi/input"
#: The forwarder's port on the container's own loopback (each sandbox has its own network namespace).
FORWARD_PORT = 3128
FORWARD_COMMAND = ("python3", "-m", "symbi_agent.forward", "--")
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")

CGROUP_PARENT = "/symbi"

LABEL_HOST = "symbi.host_id"
LABEL_TASK = "symbi.task_id"
LABEL_ATTEMPT = "symbi.attempt"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class HostCapabilities:
    """What this host's Docker engine can enforce."""

    runtimes: frozenset[str]
    #: The block device behind Docker's storage, for blkio limits; None if it cannot be found.
    blkio_device: str | None

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return tuple(t for t, rt in RUNTIMES.items() if rt in self.runtimes)


@dataclass(frozen=True, slots=True)
class SandboxDefaults:
    """Host-wide settings every sandbox gets (from ``[sandbox]``)."""

    output_cap_bytes: int = 8 * 1024 * 1024
    scratch_mb: int = 16
    pids_limit: int = 256
    user: str = "65534:65534"
    #: Where the channel directories of this host's sandboxes are made; empty: no socket, stdio only.
    channel_root: str = ""
    #: The tmpfs directory the secret files of this host's sandboxes are written under (docs/secrets.md).
    secrets_root: str = ""


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    task_id: str
    attempt: int
    host_id: str
    tier: Tier
    image: str
    command: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    limits: Limits
    user: str
    blkio_device: str | None
    labels: dict[str, str] = field(default_factory=dict)
    #: The action gateway is on: stdin stays open as the reply channel, the input is only the file.
    actions: bool = False
    #: The host directory mounted at ``/symbi/run`` holding the run's channel socket; empty: stdio only.
    channel_dir: str = ""
    #: The agent's filesystem grants, checked and decided, in mounting order.
    data_mounts: tuple[DataMount, ...] = ()
    #: The secrets the task asks for (names), and the host tmpfs directory holding their files once decided.
    secrets: tuple[str, ...] = ()
    secrets_dir: str = ""
    #: The definition's bus limits and subscriptions (none: the host's defaults).
    messaging: Messaging | None = None
    #: The definition's network allow-list; non-empty: the run gets its egress proxy (docs/network.md).
    network_access: tuple[str, ...] = ()

    @property
    def network(self) -> bool:
        return bool(self.network_access)

    @property
    def egress_socket(self) -> str:
        """The host path of the run's egress proxy socket (in its channel directory)."""
        return f"{self.channel_dir}/{EGRESS_SOCKET_NAME}"

    @property
    def runtime(self) -> str:
        if self.tier == "tier2" and self.channel_dir:
            return UDS_RUNTIME
        return RUNTIMES[self.tier]

    @property
    def owner(self) -> tuple[int, int]:
        """The sandbox's ``uid, gid`` (the channel directory is theirs)."""
        uid, _, gid = self.user.partition(":")
        return int(uid), int(gid or uid)

    @property
    def name(self) -> str:
        return container_name(self.host_id, self.task_id, self.attempt)

    @property
    def cgroup_parent(self) -> str:
        """The sandbox's own parent cgroup: it outlives the container, so the final usage can be read."""
        return f"{CGROUP_PARENT}/{self.host_id}/{self.name}"

    def hardening(self) -> dict[str, str]:
        """A readable summary for ``execution.started``."""
        network = "none"
        if self.network:
            network = (
                f"none; egress proxy {CHANNEL_MOUNT}/{EGRESS_SOCKET_NAME} for {', '.join(self.network_access)} "
                f"at {self.limits.network_io_mbps} MB/s"
            )
        return {
            "network": network,
            "root_filesystem": "read-only",
            "scratch": f"/tmp tmpfs {self.limits.scratch_mb} MiB noexec",  # noqa: S108 - the container's /tmp
            "capabilities": "all dropped",
            "no_new_privileges": "yes",
            "user": self.user,
            "pids_limit": str(self.limits.pids),
            "swap": "none",
            "blkio_device": self.blkio_device or "",
            "actions": _channel_summary(self.actions, self.channel_dir),
            "data": ", ".join(f"{m.target} {'ro' if m.read_only else 'rw'}" for m in self.data_mounts) or "none",
            "secrets": f"{SECRETS_MOUNT} ro tmpfs, {len(self.secrets)} file(s)" if self.secrets_dir else "none",
        }

    def create_kwargs(self, input_file: str) -> dict[str, Any]:
        """Keyword arguments of ``APIClient.create_container`` (without ``host_config``)."""
        env = {**self.env, "SYMBI_TASK_ID": self.task_id, "SYMBI_INPUT": INPUT_PATH}
        volumes = [INPUT_PATH]
        if self.channel_dir:
            if self.actions:
                env[SOCKET_ENV] = f"{CHANNEL_MOUNT}/{SOCKET_NAME}"
            volumes.append(CHANNEL_MOUNT)
        if self.secrets_dir:
            volumes.append(SECRETS_MOUNT)
        command = list(self.command)
        if self.network:
            env[EGRESS_SOCKET_ENV] = f"{CHANNEL_MOUNT}/{EGRESS_SOCKET_NAME}"
            env.update(dict.fromkeys(PROXY_ENV, f"http://127.0.0.1:{FORWARD_PORT}"))
            env["NO_PROXY"] = env["no_proxy"] = ""
            command = [*FORWARD_COMMAND, *command]
        return {
            "image": self.image,
            "command": command or None,
            "name": self.name,
            "user": self.user,
            "stdin_open": True,  # with StdinOnce: closing our side of the attach socket is the workload's EOF
            "environment": env,
            "working_dir": self.workdir,
            "network_disabled": True,
            "labels": self.labels,
            "runtime": self.runtime,
            "volumes": volumes,
        }

    def host_config_kwargs(self, input_file: str) -> dict[str, Any]:
        """Keyword arguments of ``APIClient.create_host_config``."""
        mbps = self.limits.disk_io_mbps * 1024 * 1024
        io = [{"Path": self.blkio_device, "Rate": mbps}] if self.blkio_device else None
        memory = self.limits.memory_mb * 1024 * 1024
        binds = {input_file: {"bind": INPUT_PATH, "mode": "ro"}}
        if self.channel_dir:
            # The directory, never the socket file; read-only, so the sandbox cannot write files to the host
            # through it (connect(2) to a socket needs no write access to its filesystem, in runc and gVisor).
            binds[self.channel_dir] = {"bind": CHANNEL_MOUNT, "mode": "ro"}
        if self.secrets_dir:  # never a secret without its decided directory: nothing else is mounted there
            binds[self.secrets_dir] = {"bind": SECRETS_MOUNT, "mode": "ro"}
        # Data grants as Mounts, not binds: a path may hold ':' or ',', and two grants may share a source.
        mounts = [
            {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only} for m in self.data_mounts
        ]
        return {
            "binds": binds,
            "mounts": mounts or None,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={self.limits.scratch_mb}m"},  # noqa: S108
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.limits.pids,
            "mem_limit": memory,
            "memswap_limit": memory,
            "nano_cpus": int(self.limits.cpu_cores * 1e9),
            "device_read_bps": io,
            "device_write_bps": io,
            "log_config": {"Type": "none", "Config": {}},
            "runtime": self.runtime,
            "cgroup_parent": self.cgroup_parent,
        }


def apply_caps(spec: SandboxSpec, caps: Mapping[str, float]) -> SandboxSpec:
    """The spec with its limits lowered to a policy's ``cap_resources`` caps (never raised), by the one
    capping rule (:func:`symbi_common.caps.lower_to_caps`); refused if too little is left."""
    try:
        limits = lower_to_caps(spec.limits, caps)
    except ValidationError as err:
        raise InvalidWorkload(f"the policy's resource caps cannot be honoured: {err}") from None
    if limits.memory_mb < MIN_MEMORY_MB or limits.cpu_cores <= 0 or limits.disk_io_mbps <= 0:
        raise InvalidWorkload(f"the policy's resource caps {dict(caps)} leave too little to run a sandbox")
    return replace(spec, limits=limits)


def container_name(host_id: str, task_id: str, attempt: int) -> str:
    return _NAME_UNSAFE.sub("_", f"symbi-{host_id}-{task_id}-{attempt}")


def host_channels(root: str, host_id: str) -> str:
    """The directory of one host's channel directories (removed whole when the host reconciles at start)."""
    return f"{root.rstrip('/')}/{hashlib.sha256(host_id.encode()).hexdigest()[:8]}"


def channel_dir(root: str, host_id: str, name: str) -> str:
    """A sandbox's channel directory: short (a socket path has at most 107 bytes), unique per container."""
    return f"{host_channels(root, host_id)}/{hashlib.sha256(name.encode()).hexdigest()[:20]}"


def _channel_summary(actions: bool, directory: str) -> str:
    if not actions:
        return "none"
    if directory:
        return f"gateway (socket {CHANNEL_MOUNT}/{SOCKET_NAME}; stdio too)"
    return "gateway (requests on stderr, replies on stdin)"


def build_spec(task: TaskView, host_id: str, caps: HostCapabilities, defaults: SandboxDefaults) -> SandboxSpec:
    """The sandbox for the task's latest assignment, or a :class:`SandboxRefused` saying why it cannot run here."""
    assigned = task.assigned
    if assigned is None:
        raise InvalidWorkload(f"task {task.task_id} has no task.assigned event")
    workload = assigned.workload
    if workload is None or not workload.image.strip():
        raise InvalidWorkload(f"task {task.task_id}: the agent's definition names no workload image")
    if not workload.workdir.startswith("/"):
        raise InvalidWorkload(f"workload.workdir must be an absolute path, not {workload.workdir!r}")
    for name in workload.env:
        if not _ENV_NAME.match(name):
            raise InvalidWorkload(f"workload.env: {name!r} is not a valid environment variable name")
    secrets = requested_secrets(assigned.secrets, workload.env)
    tier = parse_tier(assigned.tier)
    if tier is None:
        raise InvalidWorkload(f"task.assigned names tier {assigned.tier!r}; the scheduler must choose tier1 or tier2")
    if RUNTIMES[tier] not in caps.runtimes:
        raise TierUnavailable(
            f"{tier} needs the {RUNTIMES[tier]} runtime, which this host's Docker engine does not have "
            f"(it has: {', '.join(sorted(caps.runtimes)) or 'none'})"
        )
    lim = assigned.limits
    if lim.memory_mb < MIN_MEMORY_MB:
        raise InvalidWorkload(f"limits.memory_mb is {lim.memory_mb}; a sandbox needs at least {MIN_MEMORY_MB} MB")
    if lim.cpu_cores <= 0:
        raise InvalidWorkload(f"limits.cpu_cores is {lim.cpu_cores}; it must be more than 0")
    if lim.execution_timeout_s <= 0:
        raise InvalidWorkload(f"limits.execution_timeout_s is {lim.execution_timeout_s}; it must be more than 0")
    if lim.disk_io_mbps <= 0:
        raise LimitNotEnforceable(f"limits.disk_io_mbps is {lim.disk_io_mbps}; an unlimited disk IO rate is not run")
    if caps.blkio_device is None:
        raise LimitNotEnforceable(
            "the disk IO limit cannot be enforced on this host: no block device found behind Docker's storage"
        )
    # Network IO 0 MB/s is no network, whatever the allow-list says.
    network = tuple(assigned.network_access) if lim.network_io_mbps > 0 else ()
    pids = max(defaults.pids_limit, GVISOR_MIN_PIDS) if tier == "tier2" else defaults.pids_limit
    limits = Limits(
        memory_mb=lim.memory_mb,
        cpu_cores=lim.cpu_cores,
        disk_io_mbps=lim.disk_io_mbps,
        network_io_mbps=lim.network_io_mbps if network else 0,
        execution_timeout_s=lim.execution_timeout_s,
        pids=pids,
        output_cap_bytes=defaults.output_cap_bytes,
        scratch_mb=defaults.scratch_mb,
    )
    name = container_name(host_id, task.task_id, assigned.attempt)
    # A socket where the tier can reach one: runc always, gVisor only with its --host-uds runtime.
    socket_ok = tier == "tier1" or UDS_RUNTIME in caps.runtimes
    channel = (
        channel_dir(defaults.channel_root, host_id, name)
        if (workload.actions or network) and defaults.channel_root and socket_ok
        else ""
    )
    if network:
        check_network(workload.command, channel, tier, network)
    return SandboxSpec(
        task_id=task.task_id,
        attempt=assigned.attempt,
        host_id=host_id,
        tier=tier,
        image=workload.image,
        command=tuple(workload.command),
        env=env_with_secret_paths(workload.env),
        workdir=workload.workdir,
        limits=limits,
        user=defaults.user,
        blkio_device=caps.blkio_device,
        labels={LABEL_HOST: host_id, LABEL_TASK: task.task_id, LABEL_ATTEMPT: str(assigned.attempt)},
        actions=workload.actions,
        channel_dir=channel,
        secrets=secrets,
        messaging=assigned.messaging,
        network_access=network,
    )


def check_network(command: list[str] | tuple[str, ...], channel: str, tier: Tier, allow: tuple[str, ...]) -> None:
    """A network-enabled workload needs an allow-list the proxy can apply, its channel socket (the proxy's
    only way in) and its own command (run under the SDK's forwarder)."""
    try:
        AllowList.parse(allow)
    except BadTarget as exc:
        raise InvalidWorkload(f"network_access: {exc}") from None
    if not channel:
        raise LimitNotEnforceable(
            f"the definition allows network access, which goes only through the egress proxy socket, and this "
            f"host cannot give a {tier} sandbox a socket (no channel directory, or gVisor without {UDS_RUNTIME})"
        )
    if not command:
        raise InvalidWorkload(
            "a network-enabled workload must name its command: it runs under the SDK's forwarder "
            f"({' '.join(FORWARD_COMMAND)} <command>), which needs Python and symbi_agent in the image"
        )
