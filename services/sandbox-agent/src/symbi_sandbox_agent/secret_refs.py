"""Which secrets a task asks for, and where they appear in its sandbox (docs/secrets.md). Pure.

A definition names secrets two ways: ``secrets = ["providers/openai/api_key"]`` (or ``vault://…``), and a
``workload.env`` value ``vault://<name>``. Either way the secret becomes the file ``/symbi/secrets/<name>``
(read-only, on tmpfs, readable by the sandbox's user only); an environment variable given a ``vault://``
reference holds the file's *path*, never the value, so the value is in no process environment, no
``docker inspect`` and no crash dump of the environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from symbi_common.errors import ValidationError
from symbi_common.secret_records import check_name
from symbi_common.secret_source import VAULT_SCHEME
from symbi_contracts.sandbox_agent.errors import InvalidWorkload

#: Where a sandbox finds its secrets: one file per secret, by name.
SECRETS_MOUNT = "/symbi/secrets"


def secret_target(name: str) -> str:
    """The path of secret ``name`` inside the sandbox."""
    return f"{SECRETS_MOUNT}/{name}"


def _checked(ref: str, where: str) -> str:
    try:
        return check_name(ref)
    except ValidationError as err:
        raise InvalidWorkload(f"{where}: {err}") from None


def requested_secrets(secrets: Iterable[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """Every secret the task needs, by name, sorted; :class:`InvalidWorkload` for a malformed reference."""
    names = {_checked(ref, "secrets") for ref in secrets}
    names.update(_checked(v, f"workload.env.{k}") for k, v in env.items() if v.startswith(VAULT_SCHEME))
    return tuple(sorted(names))


def env_with_secret_paths(env: Mapping[str, str]) -> dict[str, str]:
    """The workload's environment with each ``vault://<name>`` value replaced by the secret file's path."""
    return {k: secret_target(check_name(v)) if v.startswith(VAULT_SCHEME) else v for k, v in env.items()}
