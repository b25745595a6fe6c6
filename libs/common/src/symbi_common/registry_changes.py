"""Key registry changes, pure: a document in, the next version out (recorded in its ``changes``).

The operator signs the result with the root key (see :mod:`symbi_common.keyfiles`).
"""

from __future__ import annotations

import datetime as dt

import msgspec

from symbi_common.crypto import Signer, key_id_for, wrap_key_id_for
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.errors import KeyringError
from symbi_common.registry_document import (
    ACTIVE,
    RETIRED,
    REVOKED,
    OperatorIssuer,
    RegisteredKey,
    RegistryChange,
    RegistryDocument,
    newest_active_key,
)
from symbi_common.settings_sandbox import HOST_ID_RE


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def with_operator_issuer(doc: RegistryDocument, public_key: bytes) -> RegistryDocument:
    """The next version with ``public_key`` as an (active) operator-token issuer."""
    at = _now()
    issuer = OperatorIssuer(key_id=key_id_for(public_key), public_key=public_key)
    change = RegistryChange(version=doc.version + 1, at=at, kind="add-issuer", service="operator", key_id=issuer.key_id)
    return msgspec.structs.replace(
        doc,
        version=doc.version + 1,
        issued_at=at,
        operator_issuers=[*doc.operator_issuers, issuer],
        changes=[*doc.changes, change],
    )


def with_operator_issuer_status(doc: RegistryDocument, key_id: str, status: str) -> RegistryDocument:
    """The next version with operator-token issuer ``key_id`` retired (``RETIRED``: rotated out) or revoked
    (``REVOKED``: its key is not to be trusted any more); the services refuse its tokens from that version on.

    An issuer never becomes active again, and a revoked one stays revoked (:class:`KeyringError` otherwise).
    """
    if status not in (RETIRED, REVOKED):
        raise KeyringError(f"an operator issuer can only be {RETIRED} or {REVOKED}, not {status!r}")
    target = next((i for i in doc.operator_issuers if i.key_id == key_id), None)
    if target is None:
        raise KeyringError(f"key {key_id} is not an operator issuer in the key registry")
    if target.status == status or target.status == REVOKED:
        raise KeyringError(f"operator issuer {key_id} is already {target.status}")
    at = _now()
    issuers = [msgspec.structs.replace(i, status=status) if i is target else i for i in doc.operator_issuers]
    kind = "retire-issuer" if status == RETIRED else "revoke-issuer"
    change = RegistryChange(version=doc.version + 1, at=at, kind=kind, service="operator", key_id=key_id)
    return msgspec.structs.replace(
        doc, version=doc.version + 1, issued_at=at, operator_issuers=issuers, changes=[*doc.changes, change]
    )


def empty_registry(root: Signer) -> RegistryDocument:
    return RegistryDocument(version=0, issued_at=_now(), root_key_id=root.key_id, keys=[])


def with_service_key(
    doc: RegistryDocument, service: str, signer: Signer, wrap_public_key: bytes, *, kind: str = "add"
) -> RegistryDocument:
    """The next version with ``signer`` as ``service``'s active key; its previous active keys retire.

    Keys bound to a sandbox host (see :func:`with_host_key`) are not the service's own and stay as they are.
    """
    subjects = list(SERVICE_SUBJECTS.get(service, ()))
    return _with_active_key(doc, service, None, signer, wrap_public_key, subjects, kind)


def _with_active_key(
    doc: RegistryDocument,
    service: str,
    host: str | None,
    signer: Signer,
    wrap_public_key: bytes,
    subjects: list[str],
    kind: str,
) -> RegistryDocument:
    """The next version with ``signer`` as the active key of ``service`` (of sandbox ``host``, or the service's own
    with None); the active keys it replaces retire, every other key stays."""
    at = _now()
    keys = [
        msgspec.structs.replace(k, status=RETIRED)
        if k.service == service and k.host == host and k.status == ACTIVE
        else k
        for k in doc.keys
    ]
    keys.append(
        RegisteredKey(
            key_id=signer.key_id,
            service=service,
            public_key=signer.public_key,
            subjects=subjects,
            wrap_public_key=wrap_public_key,
            added_at=at,
            host=host,
        )
    )
    change = RegistryChange(version=doc.version + 1, at=at, kind=kind, service=service, key_id=signer.key_id)
    return msgspec.structs.replace(
        doc, version=doc.version + 1, issued_at=at, keys=keys, changes=[*doc.changes, change]
    )


#: The service whose daemons run on sandbox hosts, one per host, each of which may get a key of its own.
HOST_SERVICE = "sandbox-agent"
#: The host aggregate's pattern in the sandbox-agent's subjects: a host key's names its own host only.
_HOST_PATTERN = "evt.host.>"


def host_subjects(host_id: str) -> list[str]:
    """What a key bound to ``host_id`` may sign: the sandbox-agent's subjects, its host aggregate narrowed to
    ``evt.host.<host_id>``."""
    return [f"evt.host.{host_id}" if p == _HOST_PATTERN else p for p in SERVICE_SUBJECTS[HOST_SERVICE]]


def check_host_id(host_id: str) -> str:
    """``host_id`` if it is one subject token (letters, digits, ``-``, ``_``); :class:`KeyringError` otherwise."""
    if not HOST_ID_RE.match(host_id):
        raise KeyringError(f"{host_id!r} is not a valid host id: use 1-64 letters, digits, '-' or '_'")
    return host_id


def with_host_key(doc: RegistryDocument, host_id: str, signer: Signer, wrap_public_key: bytes) -> RegistryDocument:
    """The next version with ``signer`` as sandbox host ``host_id``'s own active key (service ``sandbox-agent``).

    It may sign what the sandbox-agent signs, except that of the host aggregate only ``evt.host.<host_id>``;
    ``wrap_public_key`` is the service's (data keys are sealed to the service, not to a host). The host's
    previous active key retires (change ``rotate-host``; ``add-host`` for its first); every other key stays.
    """
    check_host_id(host_id)
    kind = "add-host" if newest_active_key(doc, HOST_SERVICE, host_id) is None else "rotate-host"
    return _with_active_key(doc, HOST_SERVICE, host_id, signer, wrap_public_key, host_subjects(host_id), kind)


def with_wrap_key(doc: RegistryDocument, service: str, wrap_public_key: bytes) -> RegistryDocument:
    """The next version with ``wrap_public_key`` as ``service``'s wrap key (on its active signing key's entry).

    Writers seal new data keys to it from then on; the change names the new wrap key id.
    """
    active = newest_active_key(doc, service)
    if active is None:
        raise KeyringError(f"service {service} has no active key in the key registry")
    if active.wrap_public_key == wrap_public_key:
        raise KeyringError(f"that is already the wrap key of {service}")
    at = _now()
    keys = [msgspec.structs.replace(k, wrap_public_key=wrap_public_key) if k is active else k for k in doc.keys]
    change = RegistryChange(
        version=doc.version + 1, at=at, kind="rotate-wrap", service=service, key_id=wrap_key_id_for(wrap_public_key)
    )
    return msgspec.structs.replace(
        doc, version=doc.version + 1, issued_at=at, keys=keys, changes=[*doc.changes, change]
    )


def with_revocation(doc: RegistryDocument, key_id: str, *, after_sequence: int | None) -> RegistryDocument:
    """The next version with ``key_id`` revoked after stream sequence ``after_sequence`` (``None``: from the start)."""
    if after_sequence is not None and after_sequence < 0:
        raise KeyringError("the revocation point must be a stream sequence >= 0")
    target = next((k for k in doc.keys if k.key_id == key_id), None)
    if target is None:
        raise KeyringError(f"key {key_id} is not in the key registry")
    if target.status == REVOKED:
        raise KeyringError(f"key {key_id} is already revoked")
    at = _now()
    keys = [
        msgspec.structs.replace(k, status=REVOKED, revoked_at=at, revoked_after_sequence=after_sequence)
        if k.key_id == key_id
        else k
        for k in doc.keys
    ]
    change = RegistryChange(
        version=doc.version + 1, at=at, kind="revoke", service=target.service, key_id=key_id,
        after_sequence=after_sequence,
    )  # fmt: skip
    return msgspec.structs.replace(
        doc, version=doc.version + 1, issued_at=at, keys=keys, changes=[*doc.changes, change]
    )


def encode_registry(doc: RegistryDocument) -> bytes:
    return msgspec.json.format(msgspec.json.encode(doc), indent=2)
