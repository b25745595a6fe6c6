"""The decision log of one enforcing process: every decision, sent in batches, never dropped.

Enforcement points decide at high rates, so decisions are queued here and published in batches to
``dlog.<service>`` in the ``DECISIONS`` stream (:mod:`symbi_common.decision_queue`). A batch counts as stored
once JetStream acknowledges it: it is then on disk and survives this process stopping or crashing, and the
policy service takes it from there and stores it as one event on ``evt.policy.decisions.<source>`` (each
denial as an event of its own), whether or not it was running when the decision was made. A batch keeps its
id (its ``Nats-Msg-Id``) across retries, so the stream keeps one copy of a batch whose acknowledgement was
lost, and the policy service ignores an id it has already stored. Nothing is dropped: a batch that fails is
retried with back-off, and when the queue is full :meth:`DecisionLog.record` waits for room (back-pressure
on the enforcing code) instead of discarding. Before an action goes ahead its decision is also on local disk, in
the process's spool (:mod:`symbi_common.policy.decision_spool`): a process that dies before a batch is stored
loses nothing, the next process of the service sends it. A denial is sent at once and :meth:`DecisionLog.record` waits
until it is stored (or ``timeout`` passes, after which it stays queued for the next attempt); while NATS does
not take batches, it is queued without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import structlog

from symbi_common.decision_queue import decisions_subject
from symbi_common.decisions import DecisionRecord, DecisionRequest
from symbi_common.errors import InfrastructureError
from symbi_common.policy.decision_spool import DecisionSpool, Orphan, batch_count, orphans, spool_directory
from symbi_common.policy.events import LoggedDecision
from symbi_common.sealing import new_event_id
from symbi_common.telemetry import outside_traces

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()


class LogDecisions(msgspec.Struct, frozen=True, kw_only=True):
    """One batch of one source, as published on ``dlog.<service>``."""

    source: str
    batch_id: str
    entries: list[msgspec.Raw]


class LogDecisionsTyped(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the policy service reads the same body."""

    source: str
    batch_id: str
    entries: list[LoggedDecision]


def _shrunk(entry: LoggedDecision, size: int) -> LoggedDecision:
    """``entry`` without entity attributes and context (its decision and who/what/which stay)."""
    req = entry.request
    request = msgspec.structs.replace(
        req,
        principal=msgspec.structs.replace(req.principal, attrs={}),
        resource=msgspec.structs.replace(req.resource, attrs={}),
        context={"omitted_bytes": size},
    )
    return msgspec.structs.replace(entry, request=request)


class LogReceipt(msgspec.Struct, frozen=True, kw_only=True):
    stored: int
    sequence: int
    duplicate: bool = False


class DecisionLog:
    """Queues decisions and sends them to the policy service in batches, in order, until each is stored."""

    def __init__(
        self,
        js: Any,
        *,
        service: str,
        source: str | None = None,
        batch_size: int = 200,
        batch_bytes: int = 160 * 1024,
        interval: float = 0.2,
        max_pending: int = 50_000,
        timeout: float = 5.0,
        spool_dir: Path | None = None,
    ) -> None:
        self.js = js
        self.service = service
        self.subject = decisions_subject(service)
        self.source = source or f"{service}-{uuid.uuid4().hex[:12]}"
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.interval = interval
        self.max_pending = max_pending
        self.timeout = timeout
        self._queue: deque[bytes] = deque()
        self._enqueued = 0
        self._stored = 0
        self._wake = asyncio.Event()
        #: Set when a decision is queued: the sender sleeps on it while the queue is empty.
        self._queued = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failures = 0
        #: False from a failed send until the next one succeeds.
        self.healthy = True
        #: Every decision is on local disk until stored (:mod:`symbi_common.policy.decision_spool`).
        self._spool: DecisionSpool | None = None
        self._orphans: list[Orphan] = []
        if spool_dir is not None:
            directory = spool_directory(spool_dir)
            self._orphans = orphans(directory, service)
            self._spool = DecisionSpool(directory, self.source)

    def start(self) -> None:
        """Start sending (the first decision does, too); spools that stopped processes left are sent first."""
        if self._task is None:
            with outside_traces():  # batches mix decisions of many traces: the loop belongs to none of them
                self._task = asyncio.get_running_loop().create_task(self._run(), name=f"decision-log:{self.source}")

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def stored(self) -> int:
        return self._stored

    async def record(self, request: DecisionRequest, record: DecisionRecord) -> None:
        """Queue one decision; for a denial, wait (up to ``timeout``) until it is stored."""
        self.start()
        if len(self._queue) >= self.max_pending:
            async with self._progress:
                await self._progress.wait_for(lambda: len(self._queue) < self.max_pending)
        entry = LoggedDecision(request=request, record=record, at_ns=time.time_ns(), service=self.service)
        encoded = _encoder.encode(entry)
        if len(encoded) > self.batch_bytes:  # keep the decision, not an attribute dump that could never be sent
            encoded = _encoder.encode(_shrunk(entry, len(encoded)))
        if self._spool is not None:  # on disk before the action it allows happens (or the action fails)
            self._spool.append(encoded)
        self._queue.append(encoded)
        self._queued.set()
        self._enqueued += 1
        number = self._enqueued
        if record.effect == "deny" or len(self._queue) >= self.batch_size:
            self._wake.set()
        if record.effect == "deny" and self.healthy:
            # Wait for the denial's event while the log is being stored; when the policy service does not
            # answer, the denial stays queued and the caller is not held up once per denial.
            with contextlib.suppress(TimeoutError):
                async with self._progress:
                    await asyncio.wait_for(
                        self._progress.wait_for(lambda: self._stored >= number or not self.healthy), self.timeout
                    )

    async def wait_stored(self, number: int, timeout: float) -> None:
        """Wait until the first ``number`` queued decisions are stored."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self._stored >= number), timeout)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is stored."""
        if self._enqueued > self._stored:
            self._wake.set()
            self._retry_now.set()
            await self.wait_stored(self._enqueued, timeout or self.timeout)

    async def close(self) -> None:
        """Send what is queued (bounded by ``timeout``), then stop."""
        self._closing = True
        try:  # a policy service that is not answering gets one more short chance, not the full timeout
            await self.flush(self.timeout if self.healthy else min(self.timeout, 1.0))
        except TimeoutError:
            kept = f"in {self._spool.path} for the next start" if self._spool is not None else "lost"
            log.error(
                "decision log closed with unsent decisions", source=self.source, unsent=len(self._queue), kept=kept
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._spool is not None:
            self._spool.close(all_stored=not self._queue)
            self._spool = None
        for orphan in self._orphans:  # not sent yet: the next start sends them
            orphan.release()
        self._orphans.clear()

    def _take(self) -> list[bytes]:
        return list(itertools.islice(self._queue, batch_count(self._queue, self.batch_size, self.batch_bytes)))

    async def _run(self) -> None:
        while self._orphans:
            await self._replay(self._orphans[0])
            self._orphans.pop(0)
        while True:
            if not self._queue:
                self._wake.clear()
                self._queued.clear()
                await self._queued.wait()  # no timer while nothing is queued (an idle service sleeps)
                if not self._wake.is_set():  # gather for up to ``interval`` unless a denial or a full batch waits
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.interval)
                continue
            batch, batch_id = self._take(), new_event_id()
            await self._until_sent(functools.partial(self._send_own, batch_id, batch))
            for _ in batch:
                self._queue.popleft()
            if self._spool is not None:
                self._spool.stored(batch_id, len(batch), all_stored=not self._queue)
            async with self._progress:
                self._stored += len(batch)
                self._progress.notify_all()
            if not self._closing and len(self._queue) < self.batch_size and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()

    async def _until_sent(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Do ``attempt`` until it succeeds, backing off (unless a flush asks for another try now)."""
        delay = 0.1
        while True:
            try:
                await attempt()
            except (InfrastructureError, nats.errors.Error, OSError) as exc:
                self.failures += 1
                async with self._progress:
                    self.healthy = False
                    self._progress.notify_all()
                log.warning("decision log batch not stored, retrying", source=self.source, error=str(exc))
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry_now.wait(), delay)
                delay = min(delay * 2, 5.0)
                continue
            async with self._progress:
                self.healthy = True
                self._progress.notify_all()
            return

    async def _send_own(self, batch_id: str, batch: list[bytes]) -> None:
        if self._spool is not None:
            self._spool.begin(batch_id, len(batch))
        await self._send(self.source, batch_id, batch)

    async def _replay(self, orphan: Orphan) -> None:
        """Send what a process of this service that is gone left in its spool, under its source."""
        batches = orphan.batches(self.batch_size, self.batch_bytes)
        for batch_id, batch in batches:
            await self._until_sent(functools.partial(self._send, orphan.source, batch_id, batch))
        orphan.done()
        log.info(
            "decisions of a stopped process sent",
            source=orphan.source,
            decisions=sum(len(b) for _, b in batches),
            batches=len(batches),
        )

    async def _send(self, source: str, batch_id: str, batch: list[bytes]) -> None:
        body = LogDecisions(source=source, batch_id=batch_id, entries=[msgspec.Raw(b) for b in batch])
        # Acknowledged: on disk in DECISIONS (a duplicate acknowledgement: an earlier attempt already was).
        await self.js.publish(
            self.subject, _encoder.encode(body), timeout=self.timeout, headers={"Nats-Msg-Id": batch_id}
        )
