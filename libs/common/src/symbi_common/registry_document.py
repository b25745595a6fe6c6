"""The key registry document as the root key signs it: its keys, operator-token issuers and change log.

:class:`~symbi_common.keyring.KeyRegistry` is its verified view; :mod:`symbi_common.registry_changes` makes
its next versions.
"""

from __future__ import annotations

import msgspec

REGISTRY_FILE = "registry.json"
REGISTRY_SIG_FILE = "registry.json.sig"

ACTIVE, RETIRED, REVOKED = "active", "retired", "revoked"


class RegisteredKey(msgspec.Struct, frozen=True):
    """One signing key: its service, the subjects it may sign, and the service's wrap key."""

    key_id: str
    service: str
    public_key: bytes
    subjects: list[str]
    status: str = ACTIVE
    #: The service's X25519 public key; writers seal data keys to it.
    wrap_public_key: bytes | None = None
    added_at: str = ""
    revoked_at: str | None = None
    #: Events signed by this key at stream sequences greater than this are refused. ``None`` on a
    #: revoked key: every event it signed is refused.
    revoked_after_sequence: int | None = None
    #: The one sandbox host this key signs for (a sandbox-agent key of its own host; None: the service's key).
    #: Its ``subjects`` name that host's aggregate only, and the execution events it signs count only for
    #: tasks placed on that host.
    host: str | None = None


class OperatorIssuer(msgspec.Struct, frozen=True):
    """A key that issues operator tokens for the HTTP APIs (see :mod:`symbi_common.operator_tokens`)."""

    key_id: str
    public_key: bytes
    status: str = "active"


class RegistryChange(msgspec.Struct, frozen=True):
    """One registry version's change: ``add``, ``rotate`` or ``revoke`` of signing key ``key_id``,
    ``add-host`` / ``rotate-host`` of a sandbox host's key, ``rotate-wrap`` (``key_id`` is the new wrap
    key's id) or ``add-issuer``."""

    version: int
    at: str
    kind: str
    service: str
    key_id: str
    after_sequence: int | None = None


class RegistryDocument(msgspec.Struct, frozen=True):
    version: int
    issued_at: str
    root_key_id: str
    keys: list[RegisteredKey]
    changes: list[RegistryChange] = msgspec.field(default_factory=list)
    #: Keys whose operator tokens the services accept; their private halves stay with the root key.
    operator_issuers: list[OperatorIssuer] = msgspec.field(default_factory=list)


def newest_active_key(document: RegistryDocument, service: str, host: str | None = None) -> RegisteredKey | None:
    """The service's current signing key in ``document`` (the newest active one), if any; with ``host``, the
    current key of that sandbox host (a key bound to a host is never the service's own)."""
    active = [k for k in document.keys if k.service == service and k.status == ACTIVE and k.host == host]
    return active[-1] if active else None
