"""Where sealed data keys are kept: a JetStream KV bucket (``DATAKEYS``), or memory in tests.

Each entry is one aggregate's :class:`DataKeyRecord` (every generation, each sealed per reader); the
stores know nothing of keys or readers — :mod:`symbi_common.datakeys` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import msgspec
import nats.js.errors
import structlog
from nats.js.api import DeliverPolicy

from symbi_common.errors import InfrastructureError
from symbi_common.ordered_pull import OrderedPull, kv_change

log = structlog.get_logger(__name__)

DATAKEYS_BUCKET = "DATAKEYS"
#: How long a follower of the bucket waits per pull while nothing changes.
IDLE_WAIT_S = 30.0


class DataKeyRecord(msgspec.Struct, frozen=True):
    current: int
    #: generation → wrap key id → ``<data key id> NUL <key>`` sealed to that wrap key
    generations: dict[int, dict[str, bytes]]


RECORD_ENCODER = msgspec.msgpack.Encoder()
RECORD_DECODER = msgspec.msgpack.Decoder(DataKeyRecord)


class DataKeyStore(Protocol):
    """Where wrapped data key records live. ``revision`` gives optimistic concurrency on updates."""

    async def get(self, name: str) -> tuple[bytes, int] | None: ...
    async def create(self, name: str, value: bytes) -> int:
        """The new record's revision; 0 (nothing written) if ``name`` exists or was destroyed."""
        ...

    async def update(self, name: str, value: bytes, revision: int) -> bool: ...
    async def destroy(self, name: str) -> None: ...
    def entries(self, prefix: str) -> AsyncIterator[tuple[str, bytes, int]]:
        """``(name, value, revision)`` of every record whose name starts with ``<prefix>.`` (not destroyed ones)."""
        ...

    def changes(self, types: Sequence[str] | None = None) -> AsyncIterator[str]:
        """Names of records changed (rotated) or destroyed from now on, by any process. ``types``: only the
        records named ``<type>.…`` for these (None: all)."""
        ...

    def revisions(self, types: Sequence[str] | None = None) -> AsyncIterator[tuple[str, int]]:
        """``(name, revision)`` of records written from now on, by any process; revision 0: destroyed."""
        ...

    def records(self, types: Sequence[str] | None = None) -> AsyncIterator[tuple[str, int, bytes | None]]:
        """``(name, revision, value)`` of records written from now on, by any process (created ones too);
        revision 0 and no value: destroyed."""
        ...


class MemoryDataKeyStore:
    """In-process store for tests and tools; same contract as :class:`KvDataKeyStore`."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._destroyed: set[str] = set()
        self._watchers: list[asyncio.Queue[tuple[str, int, bytes | None]]] = []

    def _changed(self, name: str, revision: int, value: bytes | None = None) -> None:
        for queue in self._watchers:
            queue.put_nowait((name, revision, value))

    async def changes(self, types: Sequence[str] | None = None) -> AsyncIterator[str]:
        async for name, _ in self.revisions(types):
            yield name

    async def revisions(self, types: Sequence[str] | None = None) -> AsyncIterator[tuple[str, int]]:
        async for name, revision, _ in self.records(types):
            yield name, revision

    async def records(self, types: Sequence[str] | None = None) -> AsyncIterator[tuple[str, int, bytes | None]]:
        queue: asyncio.Queue[tuple[str, int, bytes | None]] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while True:
                record = await queue.get()
                if types is None or record[0].split(".", 1)[0] in types:
                    yield record
        finally:
            self._watchers.remove(queue)

    async def get(self, name: str) -> tuple[bytes, int] | None:
        return self._data.get(name)

    async def entries(self, prefix: str) -> AsyncIterator[tuple[str, bytes, int]]:
        for name, (value, revision) in list(self._data.items()):
            if name.startswith(prefix + "."):
                yield name, value, revision

    async def create(self, name: str, value: bytes) -> int:
        if name in self._data or name in self._destroyed:
            return 0
        self._data[name] = (value, 1)
        self._changed(name, 1, value)
        return 1

    async def update(self, name: str, value: bytes, revision: int) -> bool:
        cur = self._data.get(name)
        if cur is None or cur[1] != revision:
            return False
        self._data[name] = (value, revision + 1)
        self._changed(name, revision + 1, value)
        return True

    async def destroy(self, name: str) -> None:
        self._data.pop(name, None)
        self._destroyed.add(name)
        self._changed(name, 0)


class KvDataKeyStore:
    """Data key records in the JetStream KV bucket ``DATAKEYS`` (history 1; destroy purges, the purge marker stays)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: Any, *, replicas: int = 1) -> KvDataKeyStore:
        """Open the bucket, which the admin provisions (:func:`provision_datakeys`); a missing bucket is an error."""
        del replicas  # the admin's provisioning decides
        try:
            kv = await js.key_value(DATAKEYS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            raise InfrastructureError(
                f"the KV bucket {DATAKEYS_BUCKET} does not exist; it is provisioned by the NATS admin "
                "(`symbi up`, or symbi_common.stream_provisioning.provision_streams with the admin credential)"
            ) from None
        return cls(kv)

    async def get(self, name: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(name)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.operation is not None:
            return None
        return bytes(entry.value), int(entry.revision)

    async def create(self, name: str, value: bytes) -> int:
        # Not kv.create(): that re-creates over a purge marker, and a destroyed key must stay destroyed
        # (a new generation 1 would reuse the destroyed key's id for another key).
        try:
            return int(await self._kv.update(name, value, last=0))
        except nats.js.errors.KeyWrongLastSequenceError:
            return 0

    async def update(self, name: str, value: bytes, revision: int) -> bool:
        try:
            await self._kv.update(name, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def destroy(self, name: str) -> None:
        await self._kv.purge(name)

    async def entries(self, prefix: str) -> AsyncIterator[tuple[str, bytes, int]]:
        watcher = await self._kv.watch(f"{prefix}.>", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the end of what exists now
                    return
                if entry.value is not None and entry.operation is None:
                    yield str(entry.key), bytes(entry.value), int(entry.revision)
        finally:
            await _stop_watcher(watcher)

    async def changes(self, types: Sequence[str] | None = None) -> AsyncIterator[str]:
        async for name, _ in self.revisions(types):
            yield name

    async def revisions(self, types: Sequence[str] | None = None) -> AsyncIterator[tuple[str, int]]:
        """Every record's current revision (0: destroyed), then each change as it happens (a KV watch, headers
        only)."""
        async for name, revision, _ in self._follow(DeliverPolicy.LAST_PER_SUBJECT, types, headers_only=True):
            yield name, revision

    async def records(self, types: Sequence[str] | None = None) -> AsyncIterator[tuple[str, int, bytes | None]]:
        """Records written from now on only (unlike a KV watch, a process starting is not sent the last value
        of every record there is)."""
        async for record in self._follow(DeliverPolicy.NEW, types, headers_only=False):
            yield record

    async def _follow(
        self, policy: DeliverPolicy, types: Sequence[str] | None, *, headers_only: bool
    ) -> AsyncIterator[tuple[str, int, bytes | None]]:
        prefix = f"$KV.{DATAKEYS_BUCKET}."
        if types is not None and not types:
            await asyncio.Event().wait()  # no type at all: nothing will ever come
        # The server filters: a service is sent the notices of the keys it may hold, not one per key there is.
        subjects = [prefix + ">"] if types is None else [f"{prefix}{t}.>" for t in types]
        feed = OrderedPull(
            self._kv._js,  # nats-py's KeyValue keeps its JetStream context private; its own watch uses it so
            stream=f"KV_{DATAKEYS_BUCKET}",
            subject=subjects,
            deliver_policy=policy,
            headers_only=headers_only,
        )
        await feed.open()
        try:
            while True:
                for msg in await feed.take(IDLE_WAIT_S):
                    name, removed = kv_change(msg, prefix)
                    if removed:
                        yield name, 0, None
                    else:
                        yield name, int(msg.metadata.sequence.stream), None if headers_only else bytes(msg.data)
        finally:
            await feed.close()


async def _stop_watcher(watcher: Any) -> None:
    """Stop a KV watcher.

    Bounded, and not wait_for: stopping the watcher can hang on shutdown (seen over TLS), and
    wait_for would then wait for the cancelled stop forever; closing the connection ends it."""
    stopping = asyncio.ensure_future(watcher.stop())
    await asyncio.wait({stopping}, timeout=2.0)
    if not stopping.done():
        stopping.cancel()
    elif not stopping.cancelled() and stopping.exception() is not None:
        log.debug("stopping the data key watcher failed", error=repr(stopping.exception()))
