"""Giving a task's secrets to its sandbox: decided, read from the store, written as files on tmpfs (docs/secrets.md).

For each secret the definition names (:mod:`.secret_refs`) the enforcer asks ``secret.read`` on
``Secret::"<name>"`` for the agent at the enforcement point ``sandbox-agent.secret_file`` (the baseline permits
none: each grant is a policy of its own). Only when every one is allowed are the values read from the secrets
store and written, each to ``<host tmpfs dir>/<name>`` (files 0400, directories 0500, owned by the sandbox's
user), which the spec binds read-only at ``/symbi/secrets``. A denied or missing secret refuses the task with a
typed reason (:class:`SecretDenied`, :class:`SecretMissing`); a host that cannot hand secrets out refuses it
too (:class:`SecretsUnavailable`). The directory is removed when the run ends, and at start-up for a crashed
run. A value is never logged, put in an event or an error: only names, versions and decisions are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from symbi_common.decisions import DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.errors import InfrastructureError, KeyringError
from symbi_common.policy.enforcement import SANDBOX_SECRET_FILE
from symbi_common.policy.hooks import Enforcer, Verdict
from symbi_common.secret_records import SecretCorrupt
from symbi_common.secret_source import SecretNotFound
from symbi_common.secret_store import SECRETS_KEY_FILE, KvSecretStore, load_secrets_key
from symbi_common.service import ServiceRuntime
from symbi_contracts.sandbox_agent.errors import InvalidWorkload, SecretDenied, SecretMissing, SecretsUnavailable
from symbi_contracts.sandbox_agent.events import SecretFileRecord

from symbi_sandbox_agent.secret_refs import SECRETS_MOUNT, secret_target

log = structlog.get_logger(__name__)


class VersionedSecrets(Protocol):
    """The secrets store as the sandbox-agent reads it (:class:`symbi_common.secret_store.KvSecretStore`)."""

    async def get_versioned(self, name: str) -> tuple[bytes, int]: ...


class SecretPolicyDenied(SecretDenied):
    """``secret.read`` was denied for the agent: the task does not run (``decision`` is the denial's)."""

    def __init__(self, message: str, decision: DecisionRecord) -> None:
        super().__init__(message)
        self.decision = decision


class SecretUndecided(Exception):
    """No decision could be had on a secret (the decision point failed): nothing starts, try again later."""


@dataclass(frozen=True, slots=True)
class DecidedSecret:
    name: str
    verdict: Verdict


async def open_secrets(rt: ServiceRuntime) -> KvSecretStore | None:
    """The secrets store, read with this service's copy of the secrets key; None (no secrets here) without one."""
    path = rt.settings.service_keys_dir(rt.name) / SECRETS_KEY_FILE
    if not path.exists():
        log.info("no secrets key: tasks that need secrets are refused", path=str(path))
        return None
    try:
        return await KvSecretStore.open(rt.nc, load_secrets_key(path))
    except (InfrastructureError, KeyringError) as exc:
        log.warning("secrets store unavailable: tasks that need secrets are refused", error=str(exc))
        return None


def question(agent_id: str, name: str) -> DecisionRequest:
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id or "unknown"),
        action="secret.read",
        resource=EntityRef(type="Secret", id=name),
        context={"delivery": "file"},
    )


def check_layout(names: Sequence[str]) -> None:
    """:class:`InvalidWorkload` if the secrets cannot all be files: one's name is a directory of another's
    (``db`` and ``db/password``: ``/symbi/secrets/db`` cannot be both a file and a directory)."""
    given = set(names)
    for name in sorted(given):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in given:
                raise InvalidWorkload(
                    f"secrets {prefix!r} and {name!r} cannot both be given: each secret is the file "
                    f"{SECRETS_MOUNT}/<name>, and {SECRETS_MOUNT}/{prefix} would have to be a file and a directory; "
                    "rename one of them"
                )


async def decide_secrets(enforcer: Enforcer, agent_id: str, names: Sequence[str]) -> list[DecidedSecret]:
    """Every secret decided and allowed, or :class:`SecretPolicyDenied` for the first denied one
    (:class:`InvalidWorkload`, before anything is asked, if they cannot all be files: :func:`check_layout`)."""
    check_layout(names)
    verdicts = await enforcer.decide_batch([question(agent_id, n) for n in names], SANDBOX_SECRET_FILE)
    for name, verdict in zip(names, verdicts, strict=True):
        if verdict.undecided:
            raise SecretUndecided(f"secret.read of {name!r}: {verdict.record.reason}")
        if isinstance(verdict.decision, Deny):
            raise SecretPolicyDenied(
                f'policy denied secret.read on Secret::"{name}" for agent {agent_id}: {verdict.decision.reason}',
                verdict.record,
            )
    return [DecidedSecret(n, v) for n, v in zip(names, verdicts, strict=True)]


def host_secrets(root: str, host_id: str) -> str:
    """The directory of one host's secret directories (removed whole when the host reconciles at start)."""
    return f"{root.rstrip('/')}/{hashlib.sha256(host_id.encode()).hexdigest()[:8]}"


def secrets_dir(root: str, host_id: str, container: str) -> str:
    """One sandbox's secrets directory, unique per container."""
    return f"{host_secrets(root, host_id)}/{hashlib.sha256(container.encode()).hexdigest()[:20]}"


async def fetch_secrets(
    store: VersionedSecrets | None, decided: Sequence[DecidedSecret]
) -> list[tuple[DecidedSecret, bytes, int]]:
    """The values of the decided secrets; :class:`SecretMissing` for one that is not stored."""
    if store is None:
        raise SecretsUnavailable(
            "the task needs secrets but this host has no secrets store: give the sandbox-agent its secrets key "
            "(`symbi keys init` copies it to keys/sandbox-agent/secrets.key)"
        )
    out: list[tuple[DecidedSecret, bytes, int]] = []
    for d in decided:
        try:
            value, version = await store.get_versioned(d.name)
        except SecretNotFound:
            raise SecretMissing(
                f"secret {d.name!r} is not in the secrets store (`symbi secrets set {d.name}`)"
            ) from None
        except SecretCorrupt as err:  # altered, moved or sealed with another key: refused, not retried as is
            raise SecretsUnavailable(f"secret {d.name!r} cannot be opened on this host: {err}") from None
        out.append((d, value, version))
    return out


def check_root(root: str) -> None:
    """Create the secrets root (0700) or check it: a directory of ours that nobody else may write, not a link.

    It lives in a shared tmpfs (``/dev/shm``): a root planted by someone else would let them read or swap files."""
    path = Path(root)
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True, mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SecretsUnavailable(
            f"the secrets directory {root} is not a directory of the sandbox-agent's user that only it may write; "
            "remove it (the sandbox-agent makes it anew)"
        )


def write_secret_files(
    directory: str, values: Sequence[tuple[DecidedSecret, bytes, int]], owner: tuple[int, int], root: str
) -> list[SecretFileRecord]:
    """Write each value to ``directory/<name>`` (0400, directories 0500, all the sandbox user's); the records.

    ``directory`` is below ``root``, on tmpfs (the values never touch a disk). Anything half-written is removed."""
    check_layout([decided.name for decided, _, _ in values])
    if os.geteuid() != 0:
        # Not root: the files cannot be given to the sandbox's user, and directories of 0500 could not be removed.
        raise SecretsUnavailable(
            f"the sandbox-agent runs as uid {os.geteuid()}, not root: it cannot give secret files to the sandbox's "
            "user nor be sure to remove them; run it as root to hand out secrets"
        )
    check_root(root)
    base = Path(directory)
    if not remove_secret_files(directory):  # what an earlier attempt at this run left (a crash before cleanup)
        raise SecretsUnavailable(
            f"the secrets directory {directory} of an earlier attempt could not be removed; remove it by hand"
        )
    try:
        base.mkdir(parents=True, mode=0o700)
        base.parent.chmod(0o700)  # the host's directory: only the sandbox-agent (and the runtimes, as root)
        records: list[SecretFileRecord] = []
        for decided, value, version in values:
            path = base / decided.name
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
            try:
                view = memoryview(value)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchown(fd, *owner)
            finally:
                os.close(fd)
            records.append(
                SecretFileRecord(
                    name=decided.name,
                    version=version,
                    target=secret_target(decided.name),
                    decision=decided.verdict.record,
                )
            )
        for folder, dirs, _ in os.walk(base, topdown=False):
            for d in dirs:
                _own_dir(Path(folder) / d, owner)
        _own_dir(base, owner)
    except PermissionError as exc:
        remove_secret_files(directory)
        raise SecretsUnavailable(
            f"secret files cannot be given to the sandbox's user {owner[0]}:{owner[1]} on this host ({exc.strerror}): "
            "the sandbox-agent must run as root to hand out secrets"
        ) from None
    except BaseException:
        remove_secret_files(directory)
        raise
    return records


def _own_dir(path: Path, owner: tuple[int, int]) -> None:
    os.chown(path, *owner)
    path.chmod(0o500)


def remove_secret_files(directory: str) -> bool:
    """Remove a sandbox's secrets directory (idempotent): whether it is gone. Its directories are 0500, so each is
    made writable by its owner first (root needs not, any other user does); what cannot be removed is logged as
    an error naming the directory (never a value), for an operator to remove by hand."""
    if not directory or not os.path.lexists(directory):
        return True
    failures: list[str] = []

    def failed(_function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        failures.append(f"{path}: {exc_info[1]}")

    if os.path.isdir(directory) and not os.path.islink(directory):
        for folder, _, _ in os.walk(directory, onerror=lambda exc: failures.append(str(exc))):
            try:
                os.chmod(folder, stat.S_IMODE(os.lstat(folder).st_mode) | stat.S_IRWXU)
            except OSError as exc:
                failures.append(f"{folder}: {exc.strerror}")
        shutil.rmtree(directory, onerror=failed)
    else:
        try:
            os.unlink(directory)
        except OSError as exc:
            failures.append(f"{directory}: {exc.strerror}")
    if os.path.lexists(directory):
        log.error(
            "secret files could not be removed: remove the directory by hand",
            directory=directory,
            errors=failures[:5] or ["it is still there"],
        )
        return False
    return True
