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
from pathlib import Path

import msgspec

from symbi_common.crypto import Verifier, key_id_for, wrap_key_id_for
from symbi_common.entitlements import AGGREGATE_READERS, SERVICE_SUBJECTS, readers_of, subject_matches, writer_of
from symbi_common.errors import (
    KeyRevoked,
    KeyringError,
    RegistryRollback,
    RegistrySignatureInvalid,
    UnauthorisedSigner,
    UnknownSigningKey,
)
from symbi_common.key_material import load_signer, load_wrap_key, read_key_file, write_key_file
from symbi_common.registry_changes import (
    empty_registry,
    encode_registry,
    with_operator_issuer,
    with_revocation,
    with_service_key,
    with_wrap_key,
)
from symbi_common.registry_document import (
    ACTIVE,
    REGISTRY_FILE,
    REGISTRY_SIG_FILE,
    RETIRED,
    REVOKED,
    OperatorIssuer,
    RegisteredKey,
    RegistryChange,
    RegistryDocument,
    newest_active_key,
)

#: Re-exported: the registry document, its changes, the entitlements and the key files lived here before
#: they got their own modules (:mod:`symbi_common.registry_document`, :mod:`symbi_common.registry_changes`,
#: :mod:`symbi_common.entitlements`, :mod:`symbi_common.key_material`).
__all__ = [
    "ACTIVE",
    "AGGREGATE_READERS",
    "REGISTRY_FILE",
    "REGISTRY_SIG_FILE",
    "RETIRED",
    "REVOKED",
    "SERVICE_SUBJECTS",
    "KeyRegistry",
    "OperatorIssuer",
    "RegisteredKey",
    "RegistryChange",
    "RegistryDocument",
    "empty_registry",
    "encode_registry",
    "load_signer",
    "load_wrap_key",
    "read_key_file",
    "readers_of",
    "subject_matches",
    "with_operator_issuer",
    "with_revocation",
    "with_service_key",
    "with_wrap_key",
    "write_key_file",
    "writer_of",
]


def _indexed(
    document: RegistryDocument,
) -> tuple[RegistryDocument, dict[str, RegisteredKey], dict[str, Verifier]]:
    return document, {k.key_id: k for k in document.keys}, {k.key_id: Verifier(k.public_key) for k in document.keys}


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

    def host_of(self, key_id: str) -> str | None:
        """The sandbox host ``key_id`` is bound to (None: a service's key, or a key not in the registry)."""
        key = self._state[1].get(key_id)
        return key.host if key else None

    def has_host_keys(self, host: str) -> bool:
        """Whether a key was ever bound to sandbox host ``host`` (whatever its status now): such a host is believed
        only with a key of its own, so revoking its keys cuts it off rather than letting it go unsigned."""
        return any(k.host == host for k in self.document.keys)

    def active_key(self, service: str, host: str | None = None) -> RegisteredKey | None:
        """The service's current signing key (the newest active one), if any; with ``host``, that sandbox host's."""
        return newest_active_key(self.document, service, host)

    def wrap_key_of(self, service: str) -> tuple[str, bytes]:
        """``(wrap key id, X25519 public key)`` of ``service``, to seal data keys to it."""
        key = self.active_key(service)
        if key is None or key.wrap_public_key is None:
            raise KeyringError(f"the key registry has no active wrap key for service {service}")
        return wrap_key_id_for(key.wrap_public_key), key.wrap_public_key

    def operator_issuers(self) -> dict[str, Verifier]:
        """The active operator-token issuer keys (key id → verifier)."""
        return {i.key_id: Verifier(i.public_key) for i in self.document.operator_issuers if i.status == "active"}
