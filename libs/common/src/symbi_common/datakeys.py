"""Per-aggregate AES-256-GCM data keys, sealed per reader and kept in a JetStream KV bucket.

One KV entry per aggregate (``<type>.<id>``) holds every generation of its data key, each sealed
(X25519 sealed box, PyNaCl) to the wrap key of every service entitled to read that aggregate type
(:data:`symbi_common.keyring.AGGREGATE_READERS`; the wrap public keys come from the root-signed
key registry). A service opens only the copies sealed to its own wrap key, so it can decrypt only
what it is entitled to. A data key id is ``<type>.<id>/<generation>``: rotation adds a generation
and new events use it, while events sealed under older generations still decrypt. Destroying the
entry crypto-shreds every sealed copy of every generation while the signed, hash-chained envelopes
stay verifiable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from symbi_common.crypto import KEY_SIZE, AeadKey, WrapKey, seal_to
from symbi_common.datakey_stores import DATAKEYS_BUCKET as DATAKEYS_BUCKET
from symbi_common.datakey_stores import RECORD_DECODER, RECORD_ENCODER
from symbi_common.datakey_stores import DataKeyRecord as DataKeyRecord
from symbi_common.datakey_stores import DataKeyStore as DataKeyStore
from symbi_common.datakey_stores import KvDataKeyStore as KvDataKeyStore
from symbi_common.datakey_stores import MemoryDataKeyStore as MemoryDataKeyStore
from symbi_common.entitlements import readers_of
from symbi_common.errors import DataKeyDestroyed, DataKeyNotEntitled, KeyringError
from symbi_common.keyring import KeyRegistry

log = structlog.get_logger(__name__)


#: Payloads one process seals with one data key generation before it rotates the key (2**28). AES-GCM with
#: random 96-bit nonces stays within NIST SP 800-38D's bound of 2**32 encryptions per key as long as at most
#: 16 processes write under one key name between rotations (each counts its own; a count restarts when a
#: process loads the key again, e.g. after a restart or past ``max_cached`` keys).
ROTATE_AFTER = 1 << 28

#: Digits of a data key generation at most: every generation fits a signed 64-bit integer (as records store it).
MAX_GENERATION_DIGITS = 18


def split_key_id(data_key_id: str) -> tuple[str, int]:
    """``(<type>.<id>, generation)`` of a data key id; :class:`KeyringError` if it is no such id (ids come from
    the wire: the generation is 1-18 ASCII digits, never handed to ``int()`` unbounded)."""
    name, _, gen = data_key_id.rpartition("/")
    if not name or not (gen.isascii() and gen.isdigit()):
        raise KeyringError(f"malformed data key id {data_key_id[:80]!r}: no '<name>/<generation>'")
    if len(gen) > MAX_GENERATION_DIGITS:
        raise KeyringError(
            f"malformed data key id {data_key_id[:80]!r}: its generation has {len(gen)} digits,"
            f" at most {MAX_GENERATION_DIGITS}"
        )
    return name, int(gen)


class DataKeys:
    """Creates, caches, rotates and destroys data keys; the only place a service's wrap key is used.

    ``wrap_key`` is this service's X25519 private key; ``registry`` gives the wrap public keys of
    the readers that new data keys are sealed to.
    """

    def __init__(
        self,
        store: DataKeyStore,
        wrap_key: WrapKey,
        registry: KeyRegistry,
        *,
        service: str,
        previous_wrap_keys: tuple[WrapKey, ...] = (),
    ) -> None:
        self._store = store
        self._wrap_key = wrap_key
        #: Wrap keys this service used before a rotation: they open copies not yet re-sealed.
        self._previous = previous_wrap_keys
        self._registry = registry
        self.service = service
        #: name → (current generation, the generations this service may open)
        self._cache: dict[str, tuple[int, dict[int, AeadKey]]] = {}
        #: name → the store revision of the cached record (a change notice of that revision is not a change)
        self._revisions: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Keys kept in memory at most (two new aggregates per task: without a bound the cache grows forever).
        self.max_cached = 50_000
        #: name → (record, revision) as another process's write announced it, not opened yet: the first read of
        #: a key created elsewhere opens this copy instead of asking the store (one KV round trip per process
        #: and new aggregate). Only records with a copy sealed to this service; the oldest go first.
        self._announced: dict[str, tuple[DataKeyRecord, int]] = {}
        self.max_announced = 4096
        #: Encryptions (random 96-bit nonces) this process makes with one generation before it rotates the key.
        self.rotate_after = ROTATE_AFTER

    @property
    def wrap_key_id(self) -> str:
        return self._wrap_key.key_id

    @property
    def wrap_public_key(self) -> bytes:
        return self._wrap_key.public_key

    def _open_copy(self, kid: str, sealed_copies: dict[str, bytes]) -> bytes | None:
        """``<kid> NUL <key>`` from the copy sealed to this service's wrap key (or a previous one); ``None`` if none is."""
        for wrap in (self._wrap_key, *self._previous):
            sealed = sealed_copies.get(wrap.key_id)
            if sealed is None:
                continue
            opened = wrap.unseal(sealed)
            prefix = kid.encode() + b"\0"
            if opened is None or not opened.startswith(prefix) or len(opened) != len(prefix) + KEY_SIZE:
                raise KeyringError(f"data key {kid} sealed to {wrap.key_id} does not open")
            return opened
        return None  # not sealed to us: this service may not read this generation

    def _unwrap(self, name: str, record: DataKeyRecord) -> tuple[int, dict[int, AeadKey]]:
        keys: dict[int, AeadKey] = {}
        for gen, sealed_copies in record.generations.items():
            kid = f"{name}/{gen}"
            opened = self._open_copy(kid, sealed_copies)
            if opened is not None:
                keys[gen] = AeadKey(kid, opened[len(kid) + 1 :])
        return record.current, keys

    def _recipients(self, name: str) -> dict[str, bytes]:
        """Wrap key id → X25519 public key of every reader entitled to ``name`` now (and this service)."""
        recipients = dict(self._registry.wrap_key_of(s) for s in readers_of(name.split(".", 1)[0]))
        recipients[self._wrap_key.key_id] = self._wrap_key.public_key
        return recipients

    def _seal(self, name: str, gen: int) -> dict[str, bytes]:
        """A fresh data key for generation ``gen``, sealed to every entitled reader (and this service)."""
        kid = f"{name}/{gen}"
        plaintext = kid.encode() + b"\0" + os.urandom(KEY_SIZE)
        return {key_id: seal_to(public, plaintext) for key_id, public in self._recipients(name).items()}

    async def _load(self, name: str) -> tuple[tuple[int, dict[int, AeadKey]], int] | None:
        announced = self._announced.pop(name, None)
        if announced is not None:
            return self._unwrap(name, announced[0]), announced[1]
        got = await self._store.get(name)
        if got is None:
            return None
        raw, revision = got
        try:
            record = RECORD_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise KeyringError(f"data key record {name} is malformed: {exc}") from None
        return self._unwrap(name, record), revision

    def _keep(self, name: str, loaded: tuple[tuple[int, dict[int, AeadKey]], int]) -> tuple[int, dict[int, AeadKey]]:
        if name not in self._cache and len(self._cache) >= self.max_cached:
            oldest = next(iter(self._cache))  # dicts keep insertion order: the longest-held key goes first
            self.forget(oldest)  # (read again from the store when needed)
        self._cache[name], self._revisions[name] = loaded
        return loaded[0]

    def _not_entitled(self, data_key_id: str) -> DataKeyNotEntitled:
        return DataKeyNotEntitled(
            f"service {self.service} is not entitled to read data key {data_key_id}", key_id=data_key_id
        )

    async def current(self, name: str, *, new: bool = False) -> AeadKey:
        """The key new events of ``name`` (``<type>.<id>``) are sealed with; created on first use.

        ``new`` says the aggregate has no events yet (its first append): the record is then created
        straight away (one KV round trip instead of a missed read, the create and a read back); if it
        exists after all (a retry, a destroyed key's marker) it is read as usual."""
        cached = self._cache.get(name)
        if cached is not None and cached[0] in cached[1]:
            key = cached[1][cached[0]]
            if key.uses < self.rotate_after:
                return key
            await self._rotate_worn(name, key.key_id)
            return await self.current(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._cache.get(name)
            if cached is None:
                loaded = None if new else await self._load(name)
                if loaded is None:
                    record = DataKeyRecord(current=1, generations={1: self._seal(name, 1)})
                    revision = await self._store.create(name, RECORD_ENCODER.encode(record))
                    if revision:
                        loaded = self._unwrap(name, record), revision  # ours is the stored record
                    else:
                        loaded = await self._load(name)  # the winner's record if another writer raced us
                        if loaded is None:
                            raise DataKeyDestroyed(
                                f"data key {name} was destroyed; {name} takes no new events", key_id=name
                            )
                cached = self._keep(name, loaded)
        self._locks.pop(name, None)
        if cached[0] not in cached[1]:
            raise self._not_entitled(f"{name}/{cached[0]}")
        return cached[1][cached[0]]

    async def by_id(self, data_key_id: str) -> AeadKey:
        """The key with this id, for decryption.

        Raises :class:`DataKeyDestroyed` if it was destroyed, :class:`DataKeyNotEntitled` if it
        exists but is not sealed to this service.
        """
        name, gen = split_key_id(data_key_id)
        cached = self._cache.get(name)
        if cached is None or gen not in cached[1]:
            loaded = await self._load(name)
            if loaded is None:
                raise DataKeyDestroyed(f"data key {data_key_id} does not exist or was destroyed", key_id=data_key_id)
            cached = self._keep(name, loaded)
            if gen not in cached[1] and gen <= cached[0]:
                raise self._not_entitled(data_key_id)
        try:
            return cached[1][gen]
        except KeyError:
            raise DataKeyDestroyed(f"data key {data_key_id} does not exist", key_id=data_key_id) from None

    async def _rotate_worn(self, name: str, key_id: str) -> None:
        """Rotate ``name`` once its current key ``key_id`` has sealed :attr:`rotate_after` payloads here (once,
        however many callers notice it together). :class:`DataKeyDestroyed` if the key is gone meanwhile."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            cached = self._cache.get(name)
            if cached is not None and f"{name}/{cached[0]}" == key_id:
                log.info("data key rotated after its encryptions", key_id=key_id, uses=self.rotate_after)
                if await self._add_generation(name) is None:
                    self.forget(name)
                    raise DataKeyDestroyed(f"data key {name} was destroyed; {name} takes no new events", key_id=name)
        self._locks.pop(name, None)

    async def rotate(self, name: str) -> str:
        """Add a new generation and make it current; returns its id. Old generations still decrypt. A key that
        does not exist yet is created (generation 1) first."""
        added = await self._add_generation(name)
        if added is None:
            await self.current(name)
            added = await self._add_generation(name)
        if added is None:
            raise DataKeyDestroyed(f"data key {name} was destroyed", key_id=name)
        return added

    async def _add_generation(self, name: str) -> str | None:
        """The id of a new current generation of ``name``'s key (retried over concurrent updates); None if the
        key has no record (never created, or destroyed)."""
        for _ in range(10):
            got = await self._store.get(name)
            if got is None:
                return None
            raw, revision = got
            record = RECORD_DECODER.decode(raw)
            gen = max(record.generations) + 1
            new = DataKeyRecord(current=gen, generations={**record.generations, gen: self._seal(name, gen)})
            if await self._store.update(name, RECORD_ENCODER.encode(new), revision):
                self.forget(name)
                return f"{name}/{gen}"
        raise KeyringError(f"could not rotate data key {name}: too many concurrent updates")

    async def exists(self, name: str) -> bool:
        """Whether ``name``'s data key exists (created and not destroyed)."""
        return await self._store.get(name) is not None

    async def destroy(self, name: str) -> None:
        """Crypto-shred every generation of ``name``'s data key (every reader's sealed copy)."""
        await self._store.destroy(name)
        self.forget(name)

    async def follow_changes(self, types: Sequence[str] | None = None) -> None:
        """Forget cached keys as soon as any process rotates or destroys them; runs until cancelled. ``types``:
        the aggregate types whose keys this service may hold (:func:`symbi_common.natsauth.datakey_types`; None:
        all) — it is sent no notice of any other key.

        Without this a process keeps decrypting with a cached key that another process has
        crypto-shredded. A record written elsewhere (created or rotated) is kept as announced, so this
        process's first read of it needs no store round trip; a destroyed one is dropped. A notice of the very record this process holds (its creation, seen by every
        process; each task creates two) changes nothing: dropping it cost a KV read and an unseal per
        process for the aggregate's next event.
        """
        async for name, revision, value in self._store.records(types):
            if revision == 0 or self._revisions.get(name) != revision:
                self.forget(name)
                if value is not None:
                    self._announce(name, value, revision)

    def _announce(self, name: str, value: bytes, revision: int) -> None:
        """Keep a record another process wrote, if it holds a copy for this service, until it is first needed."""
        try:
            record = RECORD_DECODER.decode(value)
        except msgspec.DecodeError:
            return  # read (and refused) from the store if it is ever needed
        ours = {w.key_id for w in (self._wrap_key, *self._previous)}
        if not any(ours & copies.keys() for copies in record.generations.values()):
            return
        if len(self._announced) >= self.max_announced:
            self._announced.pop(next(iter(self._announced)))
        self._announced[name] = (record, revision)

    async def forget_all(self) -> None:
        """Drop every cached key (after changes may have been missed): each is read from the store when next used."""
        for name in list(self._cache):
            self.forget(name)
        self._announced.clear()

    def forget(self, name: str) -> None:
        """Drop a cached key (after another process destroyed or rotated it)."""
        self._cache.pop(name, None)
        self._revisions.pop(name, None)
        self._announced.pop(name, None)

    # --- wrap key rotation ------------------------------------------------------------------------

    def use_wrap_key(self, wrap_key: WrapKey) -> None:
        """Open and seal with ``wrap_key`` from now on; the one in use until now still opens copies
        sealed to it (other writers may not have re-sealed theirs yet)."""
        if wrap_key.key_id != self._wrap_key.key_id:
            self._previous = (self._wrap_key, *self._previous)
            self._wrap_key = wrap_key

    def _resealed(self, name: str, raw: bytes, targets: dict[str, bytes]) -> bytes | None:
        """The record with every generation sealed to exactly ``targets`` (wrap key id → public key),
        or ``None`` if it already is. A copy for a wrap key no longer current is dropped; a missing
        one is sealed from this service's own copy, so the data key never leaves an entitled holder."""
        record = RECORD_DECODER.decode(raw)
        generations: dict[int, dict[str, bytes]] = {}
        for gen, copies in record.generations.items():
            if copies.keys() == targets.keys():
                generations[gen] = copies
                continue
            plaintext = self._open_copy(f"{name}/{gen}", copies)
            if plaintext is None:  # no copy of ours to seal from: leave the generation as it is
                log.warning("data key not re-sealed: no copy for this service", data_key=f"{name}/{gen}")
                generations[gen] = copies
                continue
            generations[gen] = {kid: copies.get(kid) or seal_to(pub, plaintext) for kid, pub in targets.items()}
        if generations == record.generations:
            return None
        return RECORD_ENCODER.encode(DataKeyRecord(current=record.current, generations=generations))

    async def reseal(self, aggregate_types: tuple[str, ...]) -> int:
        """Re-seal every data key of ``aggregate_types`` (those this service writes) to the readers'
        current wrap keys; returns how many records changed. Run after a reader's wrap key rotated.

        A record that cannot be re-sealed (malformed, or a copy that does not open) is logged and
        left as it is; the others are still re-sealed.
        """
        changed = 0
        for aggregate_type in aggregate_types:
            targets = self._recipients(f"{aggregate_type}.-")
            async for name, raw, revision in self._store.entries(aggregate_type):
                try:
                    changed += await self._reseal_one(name, raw, revision, targets)
                except (KeyringError, msgspec.DecodeError) as exc:
                    log.error("data key not re-sealed", data_key=name, error=str(exc))
        return changed

    async def _reseal_one(self, name: str, raw: bytes, revision: int, targets: dict[str, bytes]) -> bool:
        for _ in range(10):  # another writer (a rotation) may update the record meanwhile
            new = self._resealed(name, raw, targets)
            if new is None:
                return False
            if await self._store.update(name, new, revision):
                return True
            got = await self._store.get(name)
            if got is None:  # destroyed meanwhile: stays destroyed
                return False
            raw, revision = got
        raise KeyringError(f"could not re-seal data key {name}: too many concurrent updates")


async def open_service_datakeys(js: Any, service_dir: Path, service: str, registry: KeyRegistry) -> DataKeys:
    """``service``'s :class:`DataKeys` on the ``DATAKEYS`` bucket, with the wrap key from its own directory."""
    from symbi_common.key_material import load_wrap_key
    from symbi_common.keyfiles import WRAP_KEY_FILE

    return DataKeys(
        await KvDataKeyStore.open(js), load_wrap_key(service_dir / WRAP_KEY_FILE), registry, service=service
    )
