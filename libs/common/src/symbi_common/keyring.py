"""The key registry: which service owns which key, what each key may sign, who may read what.

The registry is a document signed by the offline root key (see :mod:`symbi_common.keyfiles` for
the files). Each entry binds an Ed25519 signing key to one service and to the subjects that
service writes, and carries the service's X25519 wrap key, to which writers seal data keys.
Rotation and revocation are new registry versions, each recorded in ``changes``:

- rotation retires a service's signing key: events it signed stay valid;
- revocation names a stream position: events the key signed after it are refused
  (:class:`~symbi_common.errors.KeyRevoked`), events before it stay valid.

Every service pins the root public key and refuses a registry that the root key did not sign.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from symbi_common.crypto import Signer, Verifier, WrapKey, key_id_for, wrap_key_id_for
from symbi_common.errors import (
    KeyRevoked,
    KeyringError,
    RegistryRollback,
    RegistrySignatureInvalid,
    UnauthorisedSigner,
    UnknownSigningKey,
)

#: Which subjects each service's signing key may write. Exactly one service writes each aggregate type.
SERVICE_SUBJECTS: Mapping[str, tuple[str, ...]] = {
    "lifecycle": ("evt.agent.>",),
    "scheduler": ("evt.task.>", "evt.schedule.>"),
    "policy": ("evt.policy.>",),
    "audit": ("evt.audit.>",),
    "sandbox-agent": ("evt.execution.>", "evt.host.>"),
    "context": ("evt.memory.>", "evt.knowledge.>"),
}

_ALL = tuple(SERVICE_SUBJECTS)

#: Which services may decrypt the payloads of each aggregate type (the writer first). Derived from
#: what each service reads: its own aggregates; the embedded policy decision point in every service
#: reads policy sets; the scheduler follows agents and executions; the policy service follows
#: agents; the sandbox agent loads its tasks; the context index follows tasks; the audit service
#: reads the ``agent_id`` of every event and shows event details to auditors.
AGGREGATE_READERS: Mapping[str, tuple[str, ...]] = {
    "agent": ("lifecycle", "scheduler", "policy", "audit"),
    "task": ("scheduler", "sandbox-agent", "context", "audit"),
    "schedule": ("scheduler", "audit"),
    "policy": ("policy", *(s for s in _ALL if s != "policy")),
    "audit": ("audit",),
    "execution": ("sandbox-agent", "scheduler", "audit"),
    "host": ("sandbox-agent", "audit"),
    "memory": ("context", "audit"),
    "knowledge": ("context", "audit"),
}

REGISTRY_FILE = "registry.json"
REGISTRY_SIG_FILE = "registry.json.sig"

ACTIVE, RETIRED, REVOKED = "active", "retired", "revoked"


def writer_of(aggregate_type: str) -> str | None:
    """The one service whose key may write ``evt.<aggregate_type>.…``."""
    subject = f"evt.{aggregate_type}.x"
    for service, patterns in SERVICE_SUBJECTS.items():
        if any(subject_matches(p, subject) for p in patterns):
            return service
    return None


def readers_of(aggregate_type: str) -> tuple[str, ...]:
    """The services entitled to decrypt ``aggregate_type`` payloads: the table, else writer + audit."""
    readers = AGGREGATE_READERS.get(aggregate_type)
    if readers is not None:
        return readers
    writer = writer_of(aggregate_type)
    return tuple(dict.fromkeys(s for s in (writer, "audit") if s is not None))


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


class OperatorIssuer(msgspec.Struct, frozen=True):
    """A key that issues operator tokens for the HTTP APIs (see :mod:`symbi_common.operator_tokens`)."""

    key_id: str
    public_key: bytes
    status: str = "active"


class RegistryChange(msgspec.Struct, frozen=True):
    """One registry version's change: ``add``, ``rotate`` or ``revoke`` of signing key ``key_id``,
    ``rotate-wrap`` (``key_id`` is the new wrap key's id) or ``add-issuer``."""

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


def _indexed(
    document: RegistryDocument,
) -> tuple[RegistryDocument, dict[str, RegisteredKey], dict[str, Verifier]]:
    return document, {k.key_id: k for k in document.keys}, {k.key_id: Verifier(k.public_key) for k in document.keys}


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a trailing ``>`` one or more."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, tok in enumerate(p_tokens):
        if tok == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens) or (tok != "*" and tok != s_tokens[i]):
            return False
    return len(s_tokens) == len(p_tokens)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class KeyRegistry:
    """The verified key registry: resolves key ids and checks what a key may sign, and when."""

    def __init__(self, document: RegistryDocument) -> None:
        self._state = _indexed(document)

    @property
    def document(self) -> RegistryDocument:
        """The registry version in use (replaced as a whole by :meth:`advance`)."""
        return self._state[0]

    @property
    def version(self) -> int:
        return self._state[0].version

    def advance(self, registry_bytes: bytes, signature: bytes, root_public_key: bytes) -> RegistryDocument | None:
        """Switch to a newer root-signed version, in place: every holder of this registry sees it at once.

        Returns the version it replaced, or ``None`` if ``registry_bytes`` is the version in use.
        Raises :class:`RegistrySignatureInvalid` if the root key in ``root_public_key`` did not sign it
        and :class:`RegistryRollback` if it is not newer (an older version, or another document under
        the current version number); the registry in use stays as it was.
        """
        offered = KeyRegistry.from_signed(registry_bytes, signature, root_public_key).document
        current = self._state[0]
        if offered == current:
            return None
        if offered.version <= current.version:
            raise RegistryRollback(
                f"refusing key registry v{offered.version}: not newer than v{current.version} in use; keeping v{current.version}",
                offered=offered.version,
                current=current.version,
            )
        self._state = _indexed(offered)  # one assignment: a reader sees the old or the new version, never a mix
        return current

    @classmethod
    def from_signed(cls, registry_bytes: bytes, signature: bytes, root_public_key: bytes) -> KeyRegistry:
        if not Verifier(root_public_key).verify(registry_bytes, signature):
            raise RegistrySignatureInvalid(
                "the key registry is not signed by the pinned root key; re-issue it with `symbi keys init`"
            )
        try:
            doc = msgspec.json.decode(registry_bytes, type=RegistryDocument)
        except msgspec.DecodeError as exc:
            raise KeyringError(f"the key registry is malformed: {exc}") from exc
        if doc.root_key_id != key_id_for(root_public_key):
            raise RegistrySignatureInvalid("the key registry names another root key than the pinned one")
        return cls(doc)

    @classmethod
    def load(cls, keys_dir: Path, root_public_key: bytes | None = None) -> KeyRegistry:
        """Load ``registry.json`` from ``keys_dir`` (a keyring or one service's directory) and verify it."""
        root_pub = root_public_key if root_public_key is not None else read_key_file(keys_dir / "root.pub")
        try:
            data = (keys_dir / REGISTRY_FILE).read_bytes()
            sig = base64.b64decode((keys_dir / REGISTRY_SIG_FILE).read_bytes())
        except FileNotFoundError as exc:
            raise KeyringError(f"no key registry at {exc.filename}; create it with `symbi keys init`") from exc
        return cls.from_signed(data, sig, root_pub)

    def verifier(self, key_id: str, *, subject: str | None = None, sequence: int | None = None) -> Verifier:
        try:
            return self._state[2][key_id]
        except KeyError:
            raise UnknownSigningKey(
                f"signing key {key_id} is not in the key registry", subject=subject, sequence=sequence
            ) from None

    def authorise(self, key_id: str, subject: str, *, sequence: int | None = None) -> Verifier:
        """The verifier for ``key_id`` if it may sign an event on ``subject`` at stream ``sequence``.

        Raises :class:`UnknownSigningKey` for a key not in the registry, :class:`UnauthorisedSigner`
        for a key of a service that does not own ``subject``, and :class:`KeyRevoked` for a revoked
        key when ``sequence`` is after its revocation point, or unknown (``None``: fail closed).
        """
        _, keys, verifiers = self._state
        key = keys.get(key_id)
        if key is None:
            raise UnknownSigningKey(
                f"signing key {key_id} is not in the key registry", subject=subject, sequence=sequence
            )
        verifier = verifiers[key_id]
        if not any(subject_matches(p, subject) for p in key.subjects):
            raise UnauthorisedSigner(
                f"key {key_id} of service {key.service} may not write {subject}", subject=subject, sequence=sequence
            )
        if key.status == REVOKED:
            cutoff = key.revoked_after_sequence
            if cutoff is None or sequence is None or sequence > cutoff:
                after = "" if cutoff is None else f" after stream sequence {cutoff}"
                raise KeyRevoked(
                    f"key {key_id} of service {key.service} was revoked{after} ({key.revoked_at})",
                    subject=subject,
                    sequence=sequence,
                )
        elif key.status not in (ACTIVE, RETIRED):
            raise UnauthorisedSigner(
                f"key {key_id} has unknown status {key.status!r}", subject=subject, sequence=sequence
            )
        return verifier

    def is_revoked(self, key_id: str) -> bool:
        """Whether ``key_id`` is revoked in the version in use (an unknown key is not: it is unknown)."""
        key = self._state[1].get(key_id)
        return key is not None and key.status == REVOKED

    def service_of(self, key_id: str) -> str | None:
        key = self._state[1].get(key_id)
        return key.service if key else None

    def key(self, key_id: str) -> RegisteredKey | None:
        return self._state[1].get(key_id)

    def active_key(self, service: str) -> RegisteredKey | None:
        """The service's current signing key (the newest active one), if any."""
        active = [k for k in self.document.keys if k.service == service and k.status == ACTIVE]
        return active[-1] if active else None

    def wrap_key_of(self, service: str) -> tuple[str, bytes]:
        """``(wrap key id, X25519 public key)`` of ``service``, to seal data keys to it."""
        key = self.active_key(service)
        if key is None or key.wrap_public_key is None:
            raise KeyringError(f"the key registry has no active wrap key for service {service}")
        return wrap_key_id_for(key.wrap_public_key), key.wrap_public_key

    def operator_issuers(self) -> dict[str, Verifier]:
        """The active operator-token issuer keys (key id → verifier)."""
        return {i.key_id: Verifier(i.public_key) for i in self.document.operator_issuers if i.status == "active"}


# --- registry changes (pure: a document in, the next version out) --------------------------------


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


def empty_registry(root: Signer) -> RegistryDocument:
    return RegistryDocument(version=0, issued_at=_now(), root_key_id=root.key_id, keys=[])


def with_service_key(
    doc: RegistryDocument, service: str, signer: Signer, wrap_public_key: bytes, *, kind: str = "add"
) -> RegistryDocument:
    """The next version with ``signer`` as ``service``'s active key; its previous active keys retire."""
    at = _now()
    keys = [
        msgspec.structs.replace(k, status=RETIRED) if k.service == service and k.status == ACTIVE else k
        for k in doc.keys
    ]
    keys.append(
        RegisteredKey(
            key_id=signer.key_id,
            service=service,
            public_key=signer.public_key,
            subjects=list(SERVICE_SUBJECTS.get(service, ())),
            wrap_public_key=wrap_public_key,
            added_at=at,
        )
    )
    change = RegistryChange(version=doc.version + 1, at=at, kind=kind, service=service, key_id=signer.key_id)
    return msgspec.structs.replace(
        doc, version=doc.version + 1, issued_at=at, keys=keys, changes=[*doc.changes, change]
    )


def with_wrap_key(doc: RegistryDocument, service: str, wrap_public_key: bytes) -> RegistryDocument:
    """The next version with ``wrap_public_key`` as ``service``'s wrap key (on its active signing key's entry).

    Writers seal new data keys to it from then on; the change names the new wrap key id.
    """
    active = KeyRegistry(doc).active_key(service)
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


# --- key files -----------------------------------------------------------------------------------


def write_key_file(path: Path, data: bytes, *, private: bool) -> None:
    """Write base64 key material atomically; private files are created 0600 (never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(data) + b"\n")
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)


def read_key_file(path: Path) -> bytes:
    try:
        return base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise KeyringError(f"key file {path} does not exist; create the keyring with `symbi keys init`") from None
    except ValueError:
        raise KeyringError(f"key file {path} is not valid base64") from None


def load_signer(path: Path) -> Signer:
    """Load one service's private Ed25519 signing key."""
    seed = read_key_file(path)
    if len(seed) != 32:
        raise KeyringError(f"key file {path} does not hold a 32-byte Ed25519 seed")
    return Signer(seed)


def load_wrap_key(path: Path) -> WrapKey:
    """Load one service's private X25519 wrap key (opens the data keys sealed to it)."""
    raw = read_key_file(path)
    if len(raw) != 32:
        raise KeyringError(f"key file {path} does not hold a 32-byte X25519 key")
    return WrapKey(raw)
