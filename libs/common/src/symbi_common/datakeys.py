"""Per-aggregate AES-256-GCM data keys, wrapped by the master key and kept in a JetStream KV bucket.

One KV entry per aggregate (``<type>.<id>``) holds every generation of its data key, each wrapped
(AES-GCM) by the master key with the data key id as associated data. A data key id is
``<type>.<id>/<generation>``: rotation adds a generation and new events use it, while events sealed
under older generations still decrypt. Destroying the entry crypto-shreds every payload of that
aggregate while the signed, hash-chained envelopes stay verifiable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec
import nats.js.errors

from symbi_common.crypto import KEY_SIZE, AeadKey, key_id_for
from symbi_common.errors import DataKeyDestroyed, KeyringError

DATAKEYS_BUCKET = "DATAKEYS"


class WrappedKey(msgspec.Struct, frozen=True):
    nonce: bytes
    wrapped: bytes


class DataKeyRecord(msgspec.Struct, frozen=True):
    master_key_id: str
    current: int
    generations: dict[int, WrappedKey]


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(DataKeyRecord)


class DataKeyStore(Protocol):
    """Where wrapped data key records live. ``revision`` gives optimistic concurrency on updates."""

    async def get(self, name: str) -> tuple[bytes, int] | None: ...
    async def create(self, name: str, value: bytes) -> bool: ...
    async def update(self, name: str, value: bytes, revision: int) -> bool: ...
    async def destroy(self, name: str) -> None: ...
    def changes(self) -> AsyncIterator[str]:
        """Names of records changed (rotated) or destroyed from now on, by any process."""
        ...


class MemoryDataKeyStore:
    """In-process store for tests and tools; same contract as :class:`KvDataKeyStore`."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._destroyed: set[str] = set()
        self._watchers: list[asyncio.Queue[str]] = []

    def _changed(self, name: str) -> None:
        for queue in self._watchers:
            queue.put_nowait(name)

    async def changes(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    async def get(self, name: str) -> tuple[bytes, int] | None:
        return self._data.get(name)

    async def create(self, name: str, value: bytes) -> bool:
        if name in self._data or name in self._destroyed:
            return False
        self._data[name] = (value, 1)
        return True

    async def update(self, name: str, value: bytes, revision: int) -> bool:
        cur = self._data.get(name)
        if cur is None or cur[1] != revision:
            return False
        self._data[name] = (value, revision + 1)
        self._changed(name)
        return True

    async def destroy(self, name: str) -> None:
        self._data.pop(name, None)
        self._destroyed.add(name)
        self._changed(name)


class KvDataKeyStore:
    """Data key records in the JetStream KV bucket ``DATAKEYS`` (history 1; destroy purges, the purge marker stays)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: Any, *, replicas: int = 1) -> KvDataKeyStore:
        try:
            kv = await js.key_value(DATAKEYS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(bucket=DATAKEYS_BUCKET, history=1, replicas=replicas)
            except nats.js.errors.BadRequestError:
                kv = await js.key_value(DATAKEYS_BUCKET)
        return cls(kv)

    async def get(self, name: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(name)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.operation is not None:
            return None
        return bytes(entry.value), int(entry.revision)

    async def create(self, name: str, value: bytes) -> bool:
        # Not kv.create(): that re-creates over a purge marker, and a destroyed key must stay destroyed
        # (a new generation 1 would reuse the destroyed key's id for another key).
        try:
            await self._kv.update(name, value, last=0)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def update(self, name: str, value: bytes, revision: int) -> bool:
        try:
            await self._kv.update(name, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def destroy(self, name: str) -> None:
        await self._kv.purge(name)

    async def changes(self) -> AsyncIterator[str]:
        watcher = await self._kv.watchall(meta_only=True)
        try:
            async for entry in watcher:
                if entry is not None:  # None marks the end of the entries that existed already
                    yield str(entry.key)
        finally:
            await watcher.stop()


def split_key_id(data_key_id: str) -> tuple[str, int]:
    name, _, gen = data_key_id.rpartition("/")
    if not name or not gen.isdigit():
        raise KeyringError(f"malformed data key id {data_key_id!r}")
    return name, int(gen)


class DataKeys:
    """Creates, caches, rotates and destroys data keys; the only place the master key is used."""

    def __init__(self, store: DataKeyStore, master_key: bytes) -> None:
        self._store = store
        self._master = AeadKey(key_id_for(master_key).replace("ed25519", "aes256"), master_key)
        self._cache: dict[str, tuple[int, dict[int, AeadKey]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _unwrap(self, name: str, record: DataKeyRecord) -> tuple[int, dict[int, AeadKey]]:
        if record.master_key_id != self._master.key_id:
            raise KeyringError(f"data key {name} is wrapped by master key {record.master_key_id}, not ours")
        keys: dict[int, AeadKey] = {}
        for gen, wk in record.generations.items():
            kid = f"{name}/{gen}"
            raw = self._master.decrypt(wk.nonce, wk.wrapped, kid.encode())
            if raw is None:
                raise KeyringError(f"data key {kid} cannot be unwrapped with the master key")
            keys[gen] = AeadKey(kid, raw)
        return record.current, keys

    def _wrap(self, name: str, gen: int) -> WrappedKey:
        nonce, wrapped = self._master.encrypt(os.urandom(KEY_SIZE), f"{name}/{gen}".encode())
        return WrappedKey(nonce=nonce, wrapped=wrapped)

    async def _load(self, name: str) -> tuple[tuple[int, dict[int, AeadKey]], int] | None:
        got = await self._store.get(name)
        if got is None:
            return None
        raw, revision = got
        return self._unwrap(name, _record_decoder.decode(raw)), revision

    async def current(self, name: str) -> AeadKey:
        """The key new events of ``name`` (``<type>.<id>``) are sealed with; created on first use."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached[1][cached[0]]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._cache.get(name)
            if cached is None:
                loaded = await self._load(name)
                if loaded is None:
                    record = DataKeyRecord(
                        master_key_id=self._master.key_id, current=1, generations={1: self._wrap(name, 1)}
                    )
                    await self._store.create(name, _record_encoder.encode(record))
                    loaded = await self._load(name)  # the winner's record if another writer raced us
                    if loaded is None:
                        raise DataKeyDestroyed(
                            f"data key {name} was destroyed; {name} takes no new events", key_id=name
                        )
                cached = loaded[0]
                self._cache[name] = cached
        self._locks.pop(name, None)
        return cached[1][cached[0]]

    async def by_id(self, data_key_id: str) -> AeadKey:
        """The key with this id, for decryption. Raises :class:`DataKeyDestroyed` if it was destroyed."""
        name, gen = split_key_id(data_key_id)
        cached = self._cache.get(name)
        if cached is None or gen not in cached[1]:
            loaded = await self._load(name)
            if loaded is None:
                raise DataKeyDestroyed(f"data key {data_key_id} does not exist or was destroyed", key_id=data_key_id)
            cached = loaded[0]
            self._cache[name] = cached
        try:
            return cached[1][gen]
        except KeyError:
            raise DataKeyDestroyed(f"data key {data_key_id} does not exist", key_id=data_key_id) from None

    async def rotate(self, name: str) -> str:
        """Add a new generation and make it current; returns its id. Old generations still decrypt."""
        for _ in range(10):
            got = await self._store.get(name)
            if got is None:
                await self.current(name)
                continue
            raw, revision = got
            record = _record_decoder.decode(raw)
            gen = max(record.generations) + 1
            new = DataKeyRecord(
                master_key_id=record.master_key_id,
                current=gen,
                generations={**record.generations, gen: self._wrap(name, gen)},
            )
            if await self._store.update(name, _record_encoder.encode(new), revision):
                self._cache.pop(name, None)
                return f"{name}/{gen}"
        raise KeyringError(f"could not rotate data key {name}: too many concurrent updates")

    async def destroy(self, name: str) -> None:
        """Crypto-shred every generation of ``name``'s data key."""
        await self._store.destroy(name)
        self._cache.pop(name, None)

    async def follow_changes(self) -> None:
        """Forget cached keys as soon as any process rotates or destroys them; runs until cancelled.

        Without this a process keeps decrypting with a cached key that another process has
        crypto-shredded.
        """
        async for name in self._store.changes():
            self.forget(name)

    def forget(self, name: str) -> None:
        """Drop a cached key (after another process destroyed or rotated it)."""
        self._cache.pop(name, None)
