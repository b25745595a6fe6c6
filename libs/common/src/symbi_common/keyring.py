"""The keyring: a pinned root key, per-service Ed25519 signing keys, the signed key registry, the master key.

Layout under the keys directory (``./.symbi/keys`` by default)::

    root.key, root.pub        root Ed25519 key; only ``symbi keys`` uses the private half
    <service>.key             each service's Ed25519 seed (mode 0600); a service loads only its own
    registry.json             which public key may write which subjects, ...
    registry.json.sig         ... signed by the root key over the exact file bytes
    master.key                the AES-256 key that wraps per-aggregate data keys

Every service pins the root public key and refuses a registry that the root key did not sign.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from symbi_common.crypto import KEY_SIZE, Signer, Verifier, key_id_for
from symbi_common.errors import KeyringError, RegistrySignatureInvalid, UnauthorisedSigner, UnknownSigningKey

#: Which subjects each service's signing key may write. Exactly one service writes each aggregate type.
SERVICE_SUBJECTS: Mapping[str, tuple[str, ...]] = {
    "lifecycle": ("evt.agent.>",),
    "scheduler": ("evt.task.>", "evt.schedule.>"),
    "policy": ("evt.policy.>",),
    "audit": ("evt.audit.>",),
    "sandbox-agent": ("evt.execution.>", "evt.host.>"),
    "context": ("evt.memory.>", "evt.knowledge.>"),
}

REGISTRY_FILE = "registry.json"
REGISTRY_SIG_FILE = "registry.json.sig"


class RegisteredKey(msgspec.Struct, frozen=True):
    key_id: str
    service: str
    public_key: bytes
    subjects: list[str]
    status: str = "active"


class OperatorIssuer(msgspec.Struct, frozen=True):
    """A key that issues operator tokens for the HTTP APIs (see :mod:`symbi_common.operator_tokens`)."""

    key_id: str
    public_key: bytes
    status: str = "active"


class RegistryDocument(msgspec.Struct, frozen=True):
    version: int
    issued_at: str
    root_key_id: str
    keys: list[RegisteredKey]
    #: Keys whose operator tokens the services accept; their private halves stay with the root key.
    operator_issuers: list[OperatorIssuer] = msgspec.field(default_factory=list)


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


class KeyRegistry:
    """The verified key registry: resolves key ids and checks subject authorisation."""

    def __init__(self, document: RegistryDocument) -> None:
        self.document = document
        self._keys = {k.key_id: k for k in document.keys}
        self._verifiers = {k.key_id: Verifier(k.public_key) for k in document.keys}

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
        root_pub = root_public_key if root_public_key is not None else read_key_file(keys_dir / "root.pub")
        try:
            data = (keys_dir / REGISTRY_FILE).read_bytes()
            sig = base64.b64decode((keys_dir / REGISTRY_SIG_FILE).read_bytes())
        except FileNotFoundError as exc:
            raise KeyringError(f"no key registry at {exc.filename}; create it with `symbi keys init`") from exc
        return cls.from_signed(data, sig, root_pub)

    def verifier(self, key_id: str, *, subject: str | None = None, sequence: int | None = None) -> Verifier:
        try:
            return self._verifiers[key_id]
        except KeyError:
            raise UnknownSigningKey(
                f"signing key {key_id} is not in the key registry", subject=subject, sequence=sequence
            ) from None

    def authorise(self, key_id: str, subject: str, *, sequence: int | None = None) -> Verifier:
        """The verifier for ``key_id`` if it may write ``subject``; typed errors otherwise."""
        verifier = self.verifier(key_id, subject=subject, sequence=sequence)
        key = self._keys[key_id]
        if key.status != "active" or not any(subject_matches(p, subject) for p in key.subjects):
            raise UnauthorisedSigner(
                f"key {key_id} of service {key.service} may not write {subject}",
                subject=subject,
                sequence=sequence,
            )
        return verifier

    def service_of(self, key_id: str) -> str | None:
        key = self._keys.get(key_id)
        return key.service if key else None

    def operator_issuers(self) -> dict[str, Verifier]:
        """The active operator-token issuer keys (key id → verifier)."""
        return {i.key_id: Verifier(i.public_key) for i in self.document.operator_issuers if i.status == "active"}


# --- key files -----------------------------------------------------------------------------------


def write_key_file(path: Path, data: bytes, *, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(data) + b"\n")
    os.replace(tmp, path)


def read_key_file(path: Path) -> bytes:
    try:
        return base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise KeyringError(f"key file {path} does not exist; create the keyring with `symbi keys init`") from None
    except ValueError:
        raise KeyringError(f"key file {path} is not valid base64") from None


def load_signer(path: Path) -> Signer:
    """Load one service's private signing key."""
    seed = read_key_file(path)
    if len(seed) != 32:
        raise KeyringError(f"key file {path} does not hold a 32-byte Ed25519 seed")
    return Signer(seed)


def load_master_key(path: Path) -> bytes:
    key = read_key_file(path)
    if len(key) != KEY_SIZE:
        raise KeyringError(f"master key file {path} does not hold a 32-byte AES-256 key")
    return key


def init_keyring(keys_dir: Path, services: Iterable[str] | None = None) -> list[str]:
    """Create whatever is missing of the keyring; returns what was created. Existing keys are kept."""
    created: list[str] = []
    names = list(services if services is not None else SERVICE_SUBJECTS)
    root_path = keys_dir / "root.key"
    if not root_path.exists():
        root = Signer.generate()
        write_key_file(root_path, root.seed(), private=True)
        write_key_file(keys_dir / "root.pub", root.public_key, private=False)
        created.append("root.key")
    root = load_signer(root_path)
    from symbi_common.operator_tokens import ISSUER_KEY_FILE, default_operator_dir, ensure_issuer_key

    issuer, issuer_created = ensure_issuer_key(default_operator_dir(keys_dir))
    if issuer_created:  # next to the keyring, not in it: no service is given this directory
        created.append(str(default_operator_dir(keys_dir) / ISSUER_KEY_FILE))
    for name in names:
        path = keys_dir / f"{name}.key"
        if not path.exists():
            write_key_file(path, Signer.generate().seed(), private=True)
            created.append(path.name)
    master = keys_dir / "master.key"
    if not master.exists():
        write_key_file(master, os.urandom(KEY_SIZE), private=True)
        created.append("master.key")
    if created or not (keys_dir / REGISTRY_FILE).exists():
        issue_registry(keys_dir, root, names, issuers=[issuer.public_key])
        created.append(REGISTRY_FILE)
    return created


def issue_registry(
    keys_dir: Path, root: Signer, services: Iterable[str], *, issuers: Iterable[bytes] = ()
) -> RegistryDocument:
    """Write and sign a registry of the services' current public keys (and the operator-token issuers)."""
    keys = []
    for name in services:
        signer = load_signer(keys_dir / f"{name}.key")
        keys.append(
            RegisteredKey(
                key_id=signer.key_id,
                service=name,
                public_key=signer.public_key,
                subjects=list(SERVICE_SUBJECTS.get(name, ())),
            )
        )
    doc = RegistryDocument(
        version=1,
        issued_at=dt.datetime.now(dt.UTC).isoformat(),
        root_key_id=root.key_id,
        keys=keys,
        operator_issuers=[OperatorIssuer(key_id=key_id_for(pub), public_key=pub) for pub in issuers],
    )
    data = msgspec.json.format(msgspec.json.encode(doc), indent=2)
    (keys_dir / REGISTRY_FILE).write_bytes(data)
    (keys_dir / REGISTRY_SIG_FILE).write_bytes(base64.b64encode(root.sign(data)) + b"\n")
    return doc
