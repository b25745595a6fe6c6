"""The decision log of one enforcing process: every decision, sent in batches, never dropped.

Enforcement points decide at high rates, so decisions are queued here and sent to the policy service
(``cmd.policy.log_decisions``) in batches; the policy service stores each batch as one event on
``evt.policy.decisions.<source>`` and each denial as an event of its own. A batch keeps its id across
retries and the policy service ignores an id it has already stored, so a batch whose reply was lost is
stored once. Nothing is dropped: a batch that fails is retried with back-off, and when the queue is full
:meth:`DecisionLog.record` waits for room (back-pressure on the enforcing code) instead of discarding.
A denial is sent at once and :meth:`DecisionLog.record` waits until it is stored (or ``timeout`` passes,
after which it stays queued for the next attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from typing import Any

import msgspec
import structlog

from symbi_common.commands import CommandClient
from symbi_common.decisions import DecisionRecord, DecisionRequest
from symbi_common.errors import SymbiError
from symbi_common.policy.events import LoggedDecision
from symbi_common.sealing import new_event_id

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()


class LogDecisions(msgspec.Struct, frozen=True, kw_only=True):
    """The body of ``cmd.policy.log_decisions``: one batch of one source."""

    source: str
    batch_id: str
    entries: list[msgspec.Raw]


class LogDecisionsTyped(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the policy service reads the same body."""

    source: str
    batch_id: str
    entries: list[LoggedDecision]


class LogReceipt(msgspec.Struct, frozen=True, kw_only=True):
    stored: int
    sequence: int
    duplicate: bool = False


class DecisionLog:
    """Queues decisions and sends them to the policy service in batches, in order, until each is stored."""

    def __init__(
        self,
        client: CommandClient,
        *,
        service: str,
        source: str | None = None,
        batch_size: int = 200,
        batch_bytes: int = 160 * 1024,
        interval: float = 0.2,
        max_pending: int = 50_000,
        timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.service = service
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
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def stored(self) -> int:
        return self._stored

    async def record(self, request: DecisionRequest, record: DecisionRecord) -> None:
        """Queue one decision; for a denial, wait (up to ``timeout``) until it is stored."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"decision-log:{self.source}")
        if len(self._queue) >= self.max_pending:
            async with self._progress:
                await self._progress.wait_for(lambda: len(self._queue) < self.max_pending)
        entry = LoggedDecision(request=request, record=record, at_ns=time.time_ns(), service=self.service)
        self._queue.append(_encoder.encode(entry))
        self._enqueued += 1
        number = self._enqueued
        if record.effect == "deny" or len(self._queue) >= self.batch_size:
            self._wake.set()
        if record.effect == "deny":
            with contextlib.suppress(TimeoutError):
                await self.wait_stored(number, self.timeout)

    async def wait_stored(self, number: int, timeout: float) -> None:
        """Wait until the first ``number`` queued decisions are stored."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self._stored >= number), timeout)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is stored."""
        if self._enqueued > self._stored:
            self._wake.set()
            await self.wait_stored(self._enqueued, timeout or self.timeout)

    async def close(self) -> None:
        """Send what is queued (bounded by ``timeout``), then stop."""
        self._closing = True
        try:
            await self.flush()
        except TimeoutError:
            log.error("decision log closed with unsent decisions", source=self.source, unsent=len(self._queue))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _take(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        for entry in self._queue:
            if batch and (len(batch) >= self.batch_size or size + len(entry) > self.batch_bytes):
                break
            batch.append(entry)
            size += len(entry)
        return batch

    async def _run(self) -> None:
        delay = 0.1
        batch: list[bytes] = []
        batch_id = ""
        while True:
            if not self._queue:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                continue
            if not batch:
                batch, batch_id = self._take(), new_event_id()
            try:
                await self._send(batch_id, batch)
            except (SymbiError, OSError) as exc:
                self.failures += 1
                log.warning("decision log batch not stored, retrying", source=self.source, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            for _ in batch:
                self._queue.popleft()
            async with self._progress:
                self._stored += len(batch)
                self._progress.notify_all()
            batch = []
            if not self._closing and len(self._queue) < self.batch_size and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()

    async def _send(self, batch_id: str, batch: list[bytes]) -> Any:
        body = LogDecisions(source=self.source, batch_id=batch_id, entries=[msgspec.Raw(b) for b in batch])
        return await self.client.call("policy", "log_decisions", body, LogReceipt, timeout=self.timeout)
