"""The repository that loads and changes aggregates (their pure functions are in :mod:`symbi_common.domain`).

The repository keeps recently used aggregates
in memory, loads others from a snapshot plus the events after it, and runs the write path:
decide, append with optimistic concurrency, and on a conflict catch up and decide again (bounded).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from symbi_common.domain import Aggregate
from symbi_common.errors import ConcurrencyConflict
from symbi_common.events import Event
from symbi_common.eventstore import EventStore, Recorded
from symbi_common.sealing import ChainTip
from symbi_common.snapshots import SnapshotStore

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E", bound=Event)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    state: S
    tip: ChainTip

    @property
    def exists(self) -> bool:
        return self.tip.version > 0


class Repository(Generic[S, C, E]):
    """Loads, caches and changes aggregates of one type through an :class:`EventStore`."""

    def __init__(
        self,
        store: EventStore,
        aggregate: Aggregate[S, C, E],
        *,
        snapshots: SnapshotStore | None = None,
        snapshot_every: int = 100,
        cache_size: int = 10_000,
        max_attempts: int = 5,
        data_key: Callable[[S, Sequence[E]], str | None] | None = None,
    ) -> None:
        """``data_key(state, events)``: the name of the data key that seals ``events`` (appended to ``state``) and
        snapshots of ``state`` (events empty); ``None`` from it or no function: the aggregate's own key."""
        self.store = store
        self.aggregate = aggregate
        self.snapshots = snapshots
        self.snapshot_every = snapshot_every
        self.cache_size = cache_size
        self.max_attempts = max_attempts
        self.data_key = data_key
        self._cache: OrderedDict[str, Loaded[S]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _remember(self, aggregate_id: str, loaded: Loaded[S]) -> None:
        self._cache[aggregate_id] = loaded
        self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget(self, aggregate_id: str | None = None) -> None:
        """Drop one (or every) cached aggregate; the next load reads the stream."""
        if aggregate_id is None:
            self._cache.clear()
        else:
            self._cache.pop(aggregate_id, None)

    def assume_new(self, aggregate_id: str) -> None:
        """Let the next command on ``aggregate_id`` start from no events, without reading the stream, for a
        caller with reason to think the aggregate is new (e.g. an id it has never seen). Safe when wrong:
        an append is conditional on the subject's last sequence, so an aggregate that exists after all is a
        conflict, caught up and decided again like any other."""
        if aggregate_id not in self._cache:
            self._remember(aggregate_id, Loaded(self.aggregate.initial(aggregate_id), ChainTip()))

    def _fold(self, loaded: Loaded[S], records: list[Recorded[E]]) -> Loaded[S]:
        state, tip = loaded.state, loaded.tip
        for rec in records:
            state = self.aggregate.apply(state, rec.event)
            tip = rec.tip
        return Loaded(state, tip)

    async def load(self, aggregate_id: str, *, fresh: bool = False) -> Loaded[S]:
        """The aggregate's current state: cache, else snapshot + later events, else full replay."""
        cached = None if fresh else self._cache.get(aggregate_id)
        if cached is not None:
            return cached
        base: Loaded[S] = Loaded(self.aggregate.initial(aggregate_id), ChainTip())
        if self.snapshots is not None:
            snap = await self.snapshots.load(self.aggregate.aggregate_type, aggregate_id, self.aggregate.state_type)
            if snap is not None:
                base = Loaded(snap[0], snap[1])
        records = await self.store.load(
            self.aggregate.aggregate_type, aggregate_id, self.aggregate.codec, after=base.tip
        )
        loaded = self._fold(base, records)
        self._remember(aggregate_id, loaded)
        return loaded

    async def _catch_up(self, aggregate_id: str, loaded: Loaded[S]) -> Loaded[S]:
        records = await self.store.load(
            self.aggregate.aggregate_type, aggregate_id, self.aggregate.codec, after=loaded.tip
        )
        caught = self._fold(loaded, records)
        self._remember(aggregate_id, caught)
        return caught

    async def execute(
        self,
        aggregate_id: str,
        command: C,
        *,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Loaded[S], list[Recorded[E]]]:
        """Decide ``command`` against the current state and append the resulting events.

        Commands on one aggregate are serialised within this process; across processes a
        concurrent writer causes a conflict, after which the state is caught up and the command
        decided again, up to ``max_attempts`` times.
        """
        lock = self._locks.setdefault(aggregate_id, asyncio.Lock())
        try:
            async with lock:
                return await self._execute(aggregate_id, command, causation_id, correlation_id, headers)
        finally:
            # Forget the lock once nobody waits on it; a racing newcomer is still safe (optimistic concurrency).
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._locks.pop(aggregate_id, None)

    async def _execute(
        self,
        aggregate_id: str,
        command: C,
        causation_id: str | None,
        correlation_id: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[Loaded[S], list[Recorded[E]]]:
        loaded = await self.load(aggregate_id)
        for attempt in range(1, self.max_attempts + 1):
            events = self.aggregate.decide(loaded.state, command)
            if not events:
                return loaded, []
            try:
                records = await self.store.append(
                    self.aggregate.aggregate_type,
                    aggregate_id,
                    events,
                    self.aggregate.codec,
                    expected=loaded.tip,
                    causation_id=causation_id,
                    correlation_id=correlation_id,
                    headers=headers,
                    data_key=self.data_key(loaded.state, events) if self.data_key else None,
                )
            except ConcurrencyConflict:
                if attempt == self.max_attempts:
                    self.forget(aggregate_id)
                    raise
                log.debug("append conflict, catching up", aggregate_id=aggregate_id, attempt=attempt)
                loaded = await self._catch_up(aggregate_id, loaded)
                continue
            except BaseException:
                self.forget(aggregate_id)  # the outcome is unknown: reload next time
                raise
            new = self._fold(loaded, records)
            self._remember(aggregate_id, new)
            self._maybe_snapshot(aggregate_id, loaded.tip.version, new)
            return new, records
        raise AssertionError("unreachable")

    def _maybe_snapshot(self, aggregate_id: str, before: int, after: Loaded[S]) -> None:
        if self.snapshots is None or self.snapshot_every <= 0:
            return
        if before // self.snapshot_every == after.tip.version // self.snapshot_every:
            return
        task = asyncio.get_running_loop().create_task(self._snapshot(aggregate_id, after))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _snapshot(self, aggregate_id: str, loaded: Loaded[S]) -> None:
        assert self.snapshots is not None
        try:
            data_key = self.data_key(loaded.state, ()) if self.data_key else None
            await self.snapshots.save(
                self.aggregate.aggregate_type, aggregate_id, loaded.tip, loaded.state, data_key=data_key
            )
        except Exception as exc:  # a missing snapshot only costs a longer replay
            log.warning("snapshot failed", aggregate_id=aggregate_id, error=str(exc))

    async def drain(self) -> None:
        """Wait for background snapshot writes."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
