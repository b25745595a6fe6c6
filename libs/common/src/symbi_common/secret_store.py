"""The runtime secrets store: sealed secrets in the ``SECRETS`` KV bucket, and the secrets key on disk.

Storage is a JetStream KV bucket (docs/secrets.md says why): one entry per name (the name hex-encoded), each a
:class:`~symbi_common.secret_records.SealedSecret` encrypted with AES-256-GCM under the *secrets key*, a key of
its own (never a service's signing or wrap key). NATS permissions (:mod:`symbi_common.natsauth`) let only the
operator's credential write the bucket (``symbi secrets``) and only the services that hand values out
(the sandbox-agent) and the audit service (metadata only, it has no key) read it.

The key lives in ``<home>/operator/secrets.key`` (the operator's copy, used to write) and
``<home>/keys/<reader>/secrets.key`` for each reading service; both are 0600 in 0700 directories, created by
:func:`ensure_secrets_key` (``symbi keys init`` / ``symbi up``).

:class:`KvSecretStore` implements :class:`~symbi_common.secret_source.SecretSource`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient

from symbi_common.crypto import KEY_SIZE, AeadKey
from symbi_common.errors import InfrastructureError, KeyringError
from symbi_common.key_material import read_key_file, write_key_file
from symbi_common.secret_records import (
    SealedSecret,
    SecretCorrupt,
    SecretInfo,
    bucket_key,
    check_name,
    decode_sealed,
    encode_sealed,
    info_of,
    open_secret,
    seal_secret,
    secrets_key_id,
)
from symbi_common.secret_source import SecretNotFound
from symbi_common.streams import SECRETS_BUCKET, RawMessage, read_subject

SECRETS_KEY_FILE = "secrets.key"
#: The services given a copy of the secrets key: those that hand secret values to agents.
SECRET_READERS: tuple[str, ...] = ("sandbox-agent",)
#: How often a set is retried when another writer changed the same name in between.
_SET_ATTEMPTS = 5


def load_secrets_key(path: Path) -> AeadKey:
    """The secrets key from ``path`` (base64, 32 bytes)."""
    raw = read_key_file(path)
    if len(raw) != KEY_SIZE:
        raise KeyringError(f"key file {path} does not hold a 32-byte AES-256 key")
    return AeadKey(secrets_key_id(raw), raw)


def ensure_secrets_key(keys_dir: Path, operator_dir: Path, readers: Iterable[str] = SECRET_READERS) -> list[str]:
    """Create the secrets key in ``operator_dir`` if missing and copy it to each reader's key directory.

    Idempotent; returns what was created or copied. An existing key is never replaced (the stored secrets are
    sealed with it).
    """
    created: list[str] = []
    master = operator_dir / SECRETS_KEY_FILE
    if not master.exists():
        operator_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(operator_dir, 0o700)
        write_key_file(master, os.urandom(KEY_SIZE), private=True)
        created.append(str(master))
    raw = read_key_file(master)
    for reader in readers:
        directory = keys_dir / reader
        if not directory.is_dir():
            continue  # that service's keys are not on this machine
        copy = directory / SECRETS_KEY_FILE
        if not copy.exists() or read_key_file(copy) != raw:
            write_key_file(copy, raw, private=True)
            created.append(f"{reader}/{SECRETS_KEY_FILE}")
    return created


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KvSecretStore:
    """The secrets store over the ``SECRETS`` bucket; a :class:`~symbi_common.secret_source.SecretSource`.

    Build it with :meth:`open` (``await KvSecretStore.open(nc, load_secrets_key(path))``). A reader needs the
    NATS permission to read ``KV_SECRETS``; :meth:`set` and :meth:`remove` need the operator's credential.
    """

    def __init__(self, nc: NatsClient, js: Any, kv: Any, key: AeadKey) -> None:
        self._nc = nc
        self._js = js
        self._kv = kv
        self._key = key

    @classmethod
    async def open(cls, nc: NatsClient, key: AeadKey, *, timeout: float = 5.0) -> KvSecretStore:
        """Bind to the bucket over ``nc``; :class:`InfrastructureError` if it was not provisioned."""
        js = nc.jetstream(timeout=timeout)
        try:
            kv = await js.key_value(SECRETS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            raise InfrastructureError(
                f"the {SECRETS_BUCKET} KV bucket does not exist; provision the streams (`symbi up` does)"
            ) from None
        return cls(nc, js, kv, key)

    async def _sealed(self, name: str) -> tuple[SealedSecret, int] | None:
        try:
            entry = await self._kv.get(bucket_key(name))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        sealed = decode_sealed(entry.value)
        if sealed.name != name:  # a sealed entry copied under another name
            raise SecretCorrupt(f"the entry of secret {name!r} holds a secret sealed for {sealed.name!r}")
        return sealed, entry.revision

    async def get(self, name: str) -> bytes:
        """The current value of ``name``; :class:`SecretNotFound` if it is not stored."""
        return (await self.get_versioned(name))[0]

    async def get_versioned(self, name: str) -> tuple[bytes, int]:
        """The current value of ``name`` and its version; :class:`SecretNotFound` if it is not stored."""
        found = await self._sealed(check_name(name))
        if found is None:
            raise SecretNotFound(f"secret {name!r} is not in the secrets store; set it with `symbi secrets set`")
        return open_secret(self._key, found[0]), found[0].version

    async def info(self, name: str) -> SecretInfo | None:
        """The metadata of ``name`` (never its value), or None."""
        found = await self._sealed(check_name(name))
        return None if found is None else info_of(*found)

    async def set(self, name: str, value: bytes, *, set_by: str = "operator") -> SecretInfo:
        """Store ``value`` as the next version of ``name`` (compare-and-set on the entry's revision)."""
        name = check_name(name)
        for _ in range(_SET_ATTEMPTS):
            found = await self._sealed(name)
            version = 1 if found is None else found[0].version + 1
            sealed = seal_secret(self._key, name, version, value, set_at=_now(), set_by=set_by)
            try:
                if found is None:
                    revision = await self._kv.create(bucket_key(name), encode_sealed(sealed))
                else:
                    revision = await self._kv.update(bucket_key(name), encode_sealed(sealed), last=found[1])
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another writer set it in between: seal again as the version after theirs
            return info_of(sealed, int(revision))
        raise InfrastructureError(f"secret {name!r} kept changing while it was being set; try again")

    async def remove(self, name: str) -> int | None:
        """Remove ``name`` and every stored version of it (a KV purge); the purge's revision, None if not stored."""
        name = check_name(name)
        if await self._sealed(name) is None:
            return None
        # What ``kv.purge`` publishes, published here to learn the marker's sequence (the audit record's id).
        ack = await self._js.publish(
            f"$KV.{SECRETS_BUCKET}.{bucket_key(name)}", b"", headers={"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        )
        return int(ack.seq)

    async def list(self) -> list[SecretInfo]:
        """Every stored secret's metadata, by name (read from the bucket's stream: one batched direct get)."""
        latest: dict[str, RawMessage] = {}
        async for batch in read_subject(self._nc, f"KV_{SECRETS_BUCKET}", f"$KV.{SECRETS_BUCKET}.>"):
            for msg in batch:
                latest[msg.subject] = msg
        infos = [
            info_of(decode_sealed(msg.data), msg.sequence)
            for msg in latest.values()
            if msg.data and msg.headers.get("KV-Operation") not in ("DEL", "PURGE")
        ]
        return sorted(infos, key=lambda i: i.name)
