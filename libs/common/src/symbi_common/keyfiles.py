"""The keyring on disk: an operator-only root key and one directory per service.

Layout (``<home>`` is ``.symbi`` for ``symbi up``)::

    <home>/operator/            0700, never mounted into a service
        root.key                root Ed25519 seed (0600): signs the key registry and its changes
    <home>/keys/                0700, the keyring: what the operator hands out
        root.pub                root public key, every service and verifier pins it
        registry.json(.sig)     the root-signed key registry (public)
        <service>/              0700, the only directory a service is given (SYMBI_KEYS_DIR)
            signing.key         its Ed25519 seed (0600)
            wrap.key            its X25519 private key (0600): opens the data keys sealed to it
            wrap.old.key        after a wrap key rotation, until the service has re-sealed (0600)
            root.pub, registry.json, registry.json.sig   copies of the public files
        sandbox-agent@<host>/   0700, one sandbox host's directory (``symbi keys add-host``): its own
            signing.key         signing key, bound to that host in the registry (0600)
            wrap.key            a copy of the sandbox-agent's wrap key (0600): data keys are sealed to the
                                service, not to a host
            root.pub, registry.json, registry.json.sig   copies of the public files

Every change is a new root-signed registry version, written here and then published on the
``REGISTRY`` stream (:mod:`symbi_common.registry_stream`), which running services follow
(:mod:`symbi_common.livekeys`).

A service never sees the root key, another service's keys, or a data key it is not entitled to
read (data keys are sealed per reader, see :mod:`symbi_common.datakeys`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from symbi_common.crypto import Signer, WrapKey
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.errors import KeyringError
from symbi_common.key_material import load_signer, load_wrap_key, write_atomically, write_key_file
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_changes import (
    HOST_SERVICE,
    check_host_id,
    empty_registry,
    encode_registry,
    with_host_key,
    with_operator_issuer,
    with_operator_issuer_status,
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
    RegisteredKey,
    RegistryDocument,
)

ROOT_KEY_FILE = "root.key"
ROOT_PUB_FILE = "root.pub"
SIGNING_KEY_FILE = "signing.key"
WRAP_KEY_FILE = "wrap.key"
#: The previous wrap key after a wrap key rotation, until the service has re-sealed its data keys.
OLD_WRAP_KEY_FILE = "wrap.old.key"
PUBLIC_FILES = (ROOT_PUB_FILE, REGISTRY_FILE, REGISTRY_SIG_FILE)


def default_operator_dir(keys_dir: Path) -> Path:
    """Where the root key lives unless told otherwise: ``operator/`` next to the keyring."""
    return keys_dir.parent / "operator"


def service_dir(keys_dir: Path, service: str) -> Path:
    return keys_dir / service


#: The prefix of the sandbox host directories' names.
HOST_DIR_PREFIX = f"{HOST_SERVICE}@"


def host_dir(keys_dir: Path, host_id: str) -> Path:
    """Sandbox host ``host_id``'s key directory: ``<keys>/sandbox-agent@<host_id>`` (its ``SYMBI_KEYS_DIR``)."""
    return keys_dir / f"{HOST_DIR_PREFIX}{check_host_id(host_id)}"


def host_dirs(keys_dir: Path) -> list[Path]:
    """Every sandbox host directory in the keyring."""
    return [p for p in sorted(keys_dir.glob(f"{HOST_DIR_PREFIX}*")) if p.is_dir()]


@dataclass(frozen=True, slots=True)
class ServiceKeys:
    """One service's private keys, as loaded from its own directory."""

    service: str
    signer: Signer
    wrap: WrapKey


def load_service_keys(directory: Path, service: str) -> ServiceKeys:
    """Load ``signing.key`` and ``wrap.key`` from one service's directory."""
    return ServiceKeys(service, load_signer(directory / SIGNING_KEY_FILE), load_wrap_key(directory / WRAP_KEY_FILE))


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _root(operator_dir: Path, created: list[str]) -> Signer:
    _private_dir(operator_dir)
    path = operator_dir / ROOT_KEY_FILE
    if not path.exists():
        write_key_file(path, Signer.generate().seed(), private=True)
        created.append(str(path))
    return load_signer(path)


def _current_document(keys_dir: Path, root: Signer) -> RegistryDocument:
    if not (keys_dir / REGISTRY_FILE).exists():
        return empty_registry(root)
    return KeyRegistry.load(keys_dir, root.public_key).document


def publish_registry(keys_dir: Path, root: Signer, doc: RegistryDocument) -> None:
    """Sign ``doc`` with the root key and write it, with ``root.pub``, to the keyring, every service directory
    and every sandbox host directory."""
    data = encode_registry(doc)
    sig = base64.b64encode(root.sign(data)) + b"\n"
    services = (p for p in sorted(keys_dir.iterdir()) if p.is_dir() and p.name in SERVICE_SUBJECTS)
    targets = [keys_dir, *services, *host_dirs(keys_dir)]
    for target in targets:
        write_key_file(target / ROOT_PUB_FILE, root.public_key, private=False)
        _write_public(target / REGISTRY_FILE, data)
        _write_public(target / REGISTRY_SIG_FILE, sig)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o644)  # a unique temporary file: never a link a service's user left there


def _migrate_flat_layout(keys_dir: Path, operator_dir: Path, created: list[str]) -> None:
    """Move an older flat keyring's root key out of the keyring and its service keys into their directories."""
    old_root = keys_dir / ROOT_KEY_FILE
    if old_root.exists() and not (operator_dir / ROOT_KEY_FILE).exists():
        _private_dir(operator_dir)
        os.replace(old_root, operator_dir / ROOT_KEY_FILE)
        created.append(f"moved {old_root} to {operator_dir / ROOT_KEY_FILE}")
    for name in SERVICE_SUBJECTS:
        old = keys_dir / f"{name}.key"
        if old.exists() and not (keys_dir / name / SIGNING_KEY_FILE).exists():
            _private_dir(keys_dir / name)
            os.replace(old, keys_dir / name / SIGNING_KEY_FILE)


def init_keyring(
    keys_dir: Path, services: Iterable[str] | None = None, *, operator_dir: Path | None = None
) -> list[str]:
    """Create whatever is missing of the keyring; returns what was created. Existing keys are kept.

    A service whose signing key is not the registry's active key for it gets it registered (a new
    registry version, signed by the root key).
    """
    created: list[str] = []
    operator_dir = operator_dir or default_operator_dir(keys_dir)
    _private_dir(keys_dir)
    _migrate_flat_layout(keys_dir, operator_dir, created)
    root = _root(operator_dir, created)
    doc = _current_document(keys_dir, root)
    before = doc.version
    from symbi_common.operator_tokens import ISSUER_KEY_FILE, ensure_issuer_key

    issuer, issuer_created = ensure_issuer_key(operator_dir)  # operator-only, like the root key
    if issuer_created:
        created.append(str(operator_dir / ISSUER_KEY_FILE))
    if issuer.key_id not in {i.key_id for i in doc.operator_issuers}:
        doc = with_operator_issuer(doc, issuer.public_key)
    for name in services if services is not None else SERVICE_SUBJECTS:
        if name not in SERVICE_SUBJECTS:
            raise KeyringError(f"unknown service {name!r}")
        directory = service_dir(keys_dir, name)
        _private_dir(directory)
        if not (directory / SIGNING_KEY_FILE).exists():
            write_key_file(directory / SIGNING_KEY_FILE, Signer.generate().seed(), private=True)
            created.append(f"{name}/{SIGNING_KEY_FILE}")
        if not (directory / WRAP_KEY_FILE).exists():
            write_key_file(directory / WRAP_KEY_FILE, WrapKey.generate().private_bytes(), private=True)
            created.append(f"{name}/{WRAP_KEY_FILE}")
        keys = load_service_keys(directory, name)
        active = KeyRegistry(doc).active_key(name)
        if active is None or active.key_id != keys.signer.key_id or active.wrap_public_key != keys.wrap.public_key:
            doc = with_service_key(doc, name, keys.signer, keys.wrap.public_key)
    if doc.version != before or not (keys_dir / REGISTRY_FILE).exists():
        created.append(f"{REGISTRY_FILE} v{doc.version}")
    publish_registry(keys_dir, root, doc)
    return created


def rotate_service_key(keys_dir: Path, service: str, *, operator_dir: Path | None = None) -> RegisteredKey:
    """Give ``service`` a new signing key; the old one retires (events it signed stay valid).

    The wrap key is kept: data keys sealed to it stay readable. A running service loads the new key
    from its directory when the version reaches it on the ``REGISTRY`` stream (``symbi keys rotate``
    publishes it), or when it restarts.
    """
    if service not in SERVICE_SUBJECTS:
        raise KeyringError(f"unknown service {service!r}")
    root = load_signer((operator_dir or default_operator_dir(keys_dir)) / ROOT_KEY_FILE)
    doc = _current_document(keys_dir, root)
    directory = service_dir(keys_dir, service)
    wrap = load_wrap_key(directory / WRAP_KEY_FILE)
    signer = Signer.generate()
    doc = with_service_key(doc, service, signer, wrap.public_key, kind="rotate")
    publish_registry(keys_dir, root, doc)  # registry first: a key on disk is always a registered key
    write_key_file(directory / SIGNING_KEY_FILE, signer.seed(), private=True)
    return doc.keys[-1]


def add_host_key(keys_dir: Path, host_id: str, *, operator_dir: Path | None = None) -> RegisteredKey:
    """Give sandbox host ``host_id`` a signing key of its own in ``<keys>/sandbox-agent@<host_id>``; returns its entry.

    The key may sign only that host's ``evt.host.<host_id>`` of the host aggregate (and the sandbox-agent's
    other subjects); a key the host had before retires. The directory also gets a copy of the sandbox-agent's
    current ``wrap.key``. The registry is written first, then the key file, as for a rotation: a key on disk is
    always a registered one. A running daemon of that host loads the new key when the version reaches it.
    """
    directory = host_dir(keys_dir, host_id)
    root = load_signer((operator_dir or default_operator_dir(keys_dir)) / ROOT_KEY_FILE)
    doc = _current_document(keys_dir, root)
    wrap = load_wrap_key(service_dir(keys_dir, HOST_SERVICE) / WRAP_KEY_FILE)
    signer = Signer.generate()
    doc = with_host_key(doc, host_id, signer, wrap.public_key)
    _private_dir(directory)
    write_key_file(directory / WRAP_KEY_FILE, wrap.private_bytes(), private=True)
    publish_registry(keys_dir, root, doc)  # registry first: a key on disk is always a registered key
    write_key_file(directory / SIGNING_KEY_FILE, signer.seed(), private=True)
    return doc.keys[-1]


def rotate_issuer_key(
    keys_dir: Path, *, operator_dir: Path | None = None, compromised: bool = False
) -> tuple[str, str | None]:
    """Give the operator a new operator-token issuer key; the old one retires, or is revoked if ``compromised``
    (its key is not to be trusted: the revocations it signed no longer count either). Returns the new key id and
    the old one's (None if the registry listed no active issuer of that key).

    From the registry version this publishes, the services refuse every token the old issuer signed (a running
    service as soon as the version reaches it on the ``REGISTRY`` stream): issue new ones with the new key. The
    registry is written first, then the key file, as for a service key: a key on disk is always a registered one.
    """
    from symbi_common.operator_tokens import ISSUER_KEY_FILE

    operator_dir = operator_dir or default_operator_dir(keys_dir)
    root = load_signer(operator_dir / ROOT_KEY_FILE)
    path = operator_dir / ISSUER_KEY_FILE
    old_id = load_signer(path).key_id if path.exists() else None
    doc = _current_document(keys_dir, root)
    active = {i.key_id for i in doc.operator_issuers if i.status == ACTIVE}
    new = Signer.generate()
    doc = with_operator_issuer(doc, new.public_key)
    ended = old_id if old_id in active else None
    if ended is not None:
        doc = with_operator_issuer_status(doc, ended, REVOKED if compromised else RETIRED)
    publish_registry(keys_dir, root, doc)
    write_key_file(path, new.seed(), private=True)
    return new.key_id, ended


def rotate_wrap_key(keys_dir: Path, service: str, *, operator_dir: Path | None = None) -> str:
    """Give ``service`` a new X25519 wrap key; returns its id.

    The old private key moves to ``wrap.old.key`` in the service's directory: the service opens its
    data keys with it until it has re-sealed them to the new key, then deletes it (writers re-seal
    their data keys to the new public key from their own copies). Refused while a previous
    rotation's ``wrap.old.key`` is still there: that key may still be needed.
    """
    if service not in SERVICE_SUBJECTS:
        raise KeyringError(f"unknown service {service!r}")
    root = load_signer((operator_dir or default_operator_dir(keys_dir)) / ROOT_KEY_FILE)
    directory = service_dir(keys_dir, service)
    old_path = directory / OLD_WRAP_KEY_FILE
    if old_path.exists():
        raise KeyringError(
            f"{old_path} is still there: {service} has not re-sealed its data keys since the last wrap key "
            f"rotation; start {service} (it deletes the file when done) and rotate again"
        )
    wrap = WrapKey.generate()
    doc = with_wrap_key(_current_document(keys_dir, root), service, wrap.public_key)
    # Keys before the registry: a running service that sees the new version must find the new key,
    # and the old one must be safe in wrap.old.key before wrap.key is replaced.
    os.link(directory / WRAP_KEY_FILE, old_path)
    write_key_file(directory / WRAP_KEY_FILE, wrap.private_bytes(), private=True)
    if service == HOST_SERVICE:  # each sandbox host opens the service's data keys with its own copy
        for host in host_dirs(keys_dir):
            _copy_wrap_key_to_host(host, wrap)
    publish_registry(keys_dir, root, doc)
    return wrap.key_id


def _copy_wrap_key_to_host(directory: Path, wrap: WrapKey) -> None:
    """Put ``wrap`` into a host directory as its ``wrap.key``; its previous one into ``wrap.old.key`` (unless that
    is still there from a previous rotation), so the host daemon can open what was sealed to it meanwhile."""
    current, old = directory / WRAP_KEY_FILE, directory / OLD_WRAP_KEY_FILE
    if current.exists() and not old.exists():
        os.link(current, old)
    write_key_file(current, wrap.private_bytes(), private=True)


def revoke_key(
    keys_dir: Path, key_id: str, *, after_sequence: int | None, operator_dir: Path | None = None
) -> RegisteredKey:
    """Revoke ``key_id``: events it signed after stream sequence ``after_sequence`` are refused.

    If it was its service's active key, the service gets a new one (it must not go on signing
    with a revoked key).
    """
    root = load_signer((operator_dir or default_operator_dir(keys_dir)) / ROOT_KEY_FILE)
    doc = with_revocation(_current_document(keys_dir, root), key_id, after_sequence=after_sequence)
    revoked = next(k for k in doc.keys if k.key_id == key_id)
    directory = service_dir(keys_dir, revoked.service)
    replacement: Signer | None = None
    if KeyRegistry(doc).active_key(revoked.service) is None and (directory / WRAP_KEY_FILE).exists():
        replacement = Signer.generate()
        doc = with_service_key(doc, revoked.service, replacement, load_wrap_key(directory / WRAP_KEY_FILE).public_key,
                               kind="rotate")  # fmt: skip
    publish_registry(keys_dir, root, doc)
    if replacement is not None:
        write_key_file(directory / SIGNING_KEY_FILE, replacement.seed(), private=True)
    return revoked
