"""A stored secret: its value sealed with AES-256-GCM under the secrets key, and its metadata. Pure: no I/O.

The secrets store (:mod:`symbi_common.secret_store`, docs/secrets.md) keeps one :class:`SealedSecret` per name.
The name, version and key id are the associated data of the encryption, so a ciphertext moved to another
name, or replayed as another version, does not open. Everything but the value is readable without the key:
the audit service records each change (:class:`symbi_contracts.secrets.SecretChanged`) without ever holding it.
"""

from __future__ import annotations

import binascii
import hashlib

import msgspec

from symbi_common.crypto import AeadKey
from symbi_common.errors import IntegrityError, ValidationError
from symbi_common.secret_source import SECRET_NAME, VAULT_SCHEME

#: The largest value the store takes: secrets are credentials and keys, not files.
MAX_SECRET_BYTES = 64 * 1024
_AAD_TAG = b"symbi-secret\x00"


class SecretCorrupt(IntegrityError):
    """A stored secret does not open under the secrets key (tampered with, moved, or sealed with another key)."""

    code = "secret_corrupt"


class SealedSecret(msgspec.Struct, frozen=True, kw_only=True):
    """One stored version of a secret. ``ciphertext`` holds the value; the rest is metadata."""

    name: str
    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes
    #: When it was set (RFC 3339, UTC) and by whom (the operator's name, or ``operator``).
    set_at: str
    set_by: str


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``symbi secrets list`` shows: never the value."""

    name: str
    version: int
    set_at: str
    set_by: str
    key_id: str
    #: The entry's sequence in the bucket's stream (the audit record of this change is ``secret-<revision>``).
    revision: int = 0


def check_name(name: str) -> str:
    """``name`` if it is a valid secret name (a ``vault://`` prefix is removed), else :class:`ValidationError`."""
    bare = name.removeprefix(VAULT_SCHEME)
    if not SECRET_NAME.match(bare) or ".." in bare:
        raise ValidationError(
            f"{name!r} is not a secret name: lower-case path segments of letters, digits, '_', '-' and '.' "
            "joined by '/', e.g. providers/openai/api_key",
            field="name",
        )
    return bare


def secrets_key_id(key: bytes) -> str:
    """A short stable id for a secrets key: ``aes:`` + the first 16 hex chars of its SHA-256."""
    return "aes:" + hashlib.sha256(key).hexdigest()[:16]


def bucket_key(name: str) -> str:
    """The KV key of a secret: its name hex-encoded (KV keys are subject tokens; names may hold ``/`` and ``.``)."""
    return name.encode().hex()


def name_of_bucket_key(key: str) -> str:
    """The secret name a KV key stands for; :class:`ValidationError` for a key the store did not write."""
    try:
        return check_name(bytes.fromhex(key).decode())
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValidationError(f"{key!r} is not a secrets store key", field="key") from None


def _aad(name: str, version: int, key_id: str) -> bytes:
    return _AAD_TAG + name.encode() + b"\x00" + str(version).encode() + b"\x00" + key_id.encode()


def seal_secret(key: AeadKey, name: str, version: int, value: bytes, *, set_at: str, set_by: str) -> SealedSecret:
    """Encrypt ``value`` as version ``version`` of ``name``."""
    check_name(name)
    if not value:
        raise ValidationError("a secret's value is empty", field="value")
    if len(value) > MAX_SECRET_BYTES:
        raise ValidationError(f"a secret's value is at most {MAX_SECRET_BYTES} bytes, got {len(value)}", field="value")
    nonce, ciphertext = key.encrypt(value, _aad(name, version, key.key_id))
    return SealedSecret(
        name=name, version=version, key_id=key.key_id, nonce=nonce, ciphertext=ciphertext, set_at=set_at, set_by=set_by
    )


def open_secret(key: AeadKey, sealed: SealedSecret) -> bytes:
    """The value of ``sealed``; :class:`SecretCorrupt` if it does not open under ``key``."""
    if sealed.key_id != key.key_id:
        raise SecretCorrupt(
            f"secret {sealed.name!r} v{sealed.version} is sealed with key {sealed.key_id}, this service holds "
            f"{key.key_id}: give it the current secrets key (`symbi keys init` copies it)"
        )
    value = key.decrypt(sealed.nonce, sealed.ciphertext, _aad(sealed.name, sealed.version, sealed.key_id))
    if value is None:
        raise SecretCorrupt(f"secret {sealed.name!r} v{sealed.version} does not open: it was altered or moved")
    return value


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(SealedSecret)


def encode_sealed(sealed: SealedSecret) -> bytes:
    return _ENCODER.encode(sealed)


def decode_sealed(data: bytes) -> SealedSecret:
    """Decode a stored record; :class:`SecretCorrupt` if it is not one."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise SecretCorrupt(f"a secrets store entry is not a sealed secret: {exc}") from None


def info_of(sealed: SealedSecret, revision: int = 0) -> SecretInfo:
    return SecretInfo(
        name=sealed.name,
        version=sealed.version,
        set_at=sealed.set_at,
        set_by=sealed.set_by,
        key_id=sealed.key_id,
        revision=revision,
    )
