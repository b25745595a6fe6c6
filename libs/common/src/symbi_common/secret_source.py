"""Where a service reads a runtime secret from (the secrets store; docs/secrets.md). Pure: no I/O here.

A secret is named by a path such as ``providers/openai/api_key`` (``vault://providers/openai/api_key`` in a
definition). Its value is bytes and must never reach a log, an event or a task's output.
"""

from __future__ import annotations

import re
from typing import Protocol

from symbi_common.errors import NotFound

#: A secret's name: lower-case path segments of letters, digits, ``_``, ``-`` and ``.``, joined by ``/``.
SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}(/[a-z0-9][a-z0-9_.-]{0,62}){0,7}\Z")
VAULT_SCHEME = "vault://"


class SecretNotFound(NotFound):
    code = "secret_not_found"


class SecretSource(Protocol):
    """Reads secrets by name; raises :class:`SecretNotFound` for a name that is not stored."""

    async def get(self, name: str) -> bytes: ...
