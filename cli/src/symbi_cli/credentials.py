"""The operator credential the CLI sends with every HTTP call to a service.

``symbi up`` issues a local admin token and writes it to ``<home>/operator.token`` (mode 0600); every
command that calls a service's API sends it as ``Authorization: Bearer …``. ``$SYMBI_OPERATOR_TOKEN``
overrides the file (e.g. a token issued with ``symbi token issue`` for someone else's role).
"""

from __future__ import annotations

import os
from pathlib import Path

from symbi_common.operator_tokens import bearer_header, default_operator_dir, issue_token, load_issuer_key

from symbi_cli.errors import CliError
from symbi_cli.token_cmd import record_issued

TOKEN_FILE = "operator.token"  # noqa: S105 (a file name)
TOKEN_ENV = "SYMBI_OPERATOR_TOKEN"  # noqa: S105 (a variable name)
#: How long the token ``symbi up`` writes stays valid (it writes a new one on every start).
LOCAL_TOKEN_TTL_S = 30 * 86_400


def default_home() -> Path:
    return Path(os.environ.get("SYMBI_HOME") or ".symbi")


def write_local_token(home: Path, keys_dir: Path) -> Path:
    """Issue an admin token from the keyring's issuer and write it to ``<home>/operator.token`` (0600)."""
    issuer = load_issuer_key(default_operator_dir(keys_dir))
    token, claims = issue_token(issuer, name="local-admin", role="admin", ttl_s=LOCAL_TOKEN_TTL_S)
    record_issued(home, claims)  # so `symbi token list` shows it and `symbi token revoke` can name it
    path = home / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def operator_token(home: Path | None = None) -> str:
    """``$SYMBI_OPERATOR_TOKEN``, else ``<home>/operator.token``; a :class:`CliError` saying how to get one."""
    explicit = os.environ.get(TOKEN_ENV, "").strip()
    if explicit:
        return explicit
    path = (home or default_home()) / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise CliError(
            f"no operator token at {path}: start the runtime with `symbi up` (it writes one), "
            f"or set {TOKEN_ENV} to a token from `symbi token issue`"
        ) from None
    if not token:
        raise CliError(f"{path} is empty; restart `symbi up` or set {TOKEN_ENV}")
    return token


def auth_headers(home: Path | None = None) -> dict[str, str]:
    """The ``Authorization`` header of the operator credential."""
    return bearer_header(operator_token(home))
