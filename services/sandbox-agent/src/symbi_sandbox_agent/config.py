"""The ``[sandbox]`` settings as the daemon reads them: the values it refuses at start-up (the host id:
:func:`symbi_common.settings_sandbox.resolve_host_id`)."""

from __future__ import annotations

import os
import re
import tempfile

from symbi_common.errors import ConfigError
from symbi_common.settings_sandbox import SandboxSettings

from symbi_sandbox_agent.data_roots import load_roots
from symbi_sandbox_agent.grants import DataRoot
from symbi_sandbox_agent.spec import SandboxDefaults


def check_settings(s: SandboxSettings) -> None:
    """Refuse ``[sandbox]`` values that would leave sandboxes unlimited or the host looking lost."""
    checks = [
        (s.output_cap_bytes > 0, "output_cap_bytes", "must be more than 0"),
        (s.scratch_mb >= 1, "scratch_mb", "must be at least 1"),
        (s.pids_limit >= 16, "pids_limit", "must be at least 16"),
        (0 < s.heartbeat_interval_s <= 2.5, "heartbeat_interval_s", "must be in (0, 2.5]: a host is lost after 5 s"),
        (s.bus_messages_per_s > 0, "bus_messages_per_s", "must be more than 0"),
        (s.bus_bytes_per_s > 0, "bus_bytes_per_s", "must be more than 0"),
        (1.0 <= s.bus_ack_wait_s <= 3600.0, "bus_ack_wait_s", "must be in [1, 3600] seconds"),
        (
            re.fullmatch(r"\d+:\d+", s.user) is not None and not s.user.startswith("0:"),
            "user",
            "must be a non-root uid:gid",
        ),
    ]
    for ok, name, message in checks:
        if not ok:
            raise ConfigError(message, setting=f"sandbox.{name}")
    data_roots(s)


def work_root(s: SandboxSettings) -> str:
    """Where the daemon stages each sandbox's input (one directory per host id below it)."""
    return s.work_dir or f"{tempfile.gettempdir()}/symbi-sandbox"


def data_roots(s: SandboxSettings) -> dict[str, DataRoot]:
    """The data roots agents may be granted (docs/grants.md), each checked: a bad one stops start-up."""
    return load_roots(s.data_roots, own=(work_root(s), channel_root(), secrets_root()))


def sandbox_defaults(s: SandboxSettings) -> SandboxDefaults:
    """The host-wide settings every sandbox of this host gets."""
    return SandboxDefaults(
        output_cap_bytes=s.output_cap_bytes,
        scratch_mb=s.scratch_mb,
        pids_limit=s.pids_limit,
        user=s.user,
        channel_root=channel_root(),
        secrets_root=secrets_root(),
    )


def secrets_root() -> str:
    """Where this host's sandbox secret files go: ``/dev/shm`` (tmpfs), so a value never reaches a disk.

    ``/dev/shm`` is shared: :func:`~symbi_sandbox_agent.secret_files.write_secret_files` refuses a root that is a
    link, is not ours or others may write."""
    uid = os.geteuid()
    return "/dev/shm/symbi-secrets" if uid == 0 else f"/dev/shm/symbi-secrets-{uid}"  # noqa: S108 - checked


def channel_root() -> str:
    """Where this host's sandbox channel directories go: short, since a socket path has at most 107 bytes."""
    if os.geteuid() == 0:
        return "/run/symbi/channels"
    return f"{tempfile.gettempdir()}/symbi-channels-{os.geteuid()}"
