"""The event store: seal and conditionally append events, load and verify an aggregate's history.

Appends use ``Nats-Expected-Last-Subject-Sequence`` (optimistic concurrency per aggregate) and
``Nats-Msg-Id`` = event id (de-duplication). Several events of one command go out as one JetStream
atomic batch: all land or none. After a timeout the store checks whether the event landed before it
tries again, so a retry never writes an event twice.

Read-after-write per aggregate: the store remembers, for the aggregates it used last, the highest sequence it
knows each holds (its own acks, the sequence a conflict named, its reads), and a load reads at least that far
(:mod:`symbi_common.fenced_read`), also when a lagging follower replica answers the direct get.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient

from symbi_common.ack_requests import AckRequests
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys
from symbi_common.envelope import EventHeader, event_hash, subject_for
from symbi_common.errors import (
    AppendFailed,
    ConcurrencyConflict,
    PayloadTooLarge,
    SigningKeyRefused,
    SymbiError,
)
from symbi_common.events import Event, EventCodec, event_type
from symbi_common.fenced_read import KnownSequences, read_subject_at_least
from symbi_common.keyring import REVOKED, KeyRegistry
from symbi_common.reader import Recorded as Recorded  # re-exported: the write path returns it
from symbi_common.reader import decode_opened
from symbi_common.sealing import ChainTip, OpenedEvent, check_link, new_event_id, open_envelope, seal
from symbi_common.streams import EVENTS_STREAM
from symbi_common.telemetry import EVENT_APPEND_SECONDS, EVENTS_APPENDED, inject_trace

E = TypeVar("E", bound=Event)

#: JetStream error code for a failed ``Nats-Expected-Last-Subject-Sequence`` check.
WRONG_LAST_SEQUENCE = 10071
#: The same refusal from a replicated stream (R3) while another message of the subject is still in flight
#: through Raft: "wrong last sequence" without the number. Nothing was stored; a conflict like 10071.
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164
_WRONG_LAST_RE = re.compile(r"wrong last sequence: (\d+)")

# Headers in clear, so events are readable with ordinary NATS tools; they are not trusted by verifiers.
H_EVENT_TYPE = "Symbi-Event-Type"
H_EVENT_ID = "Symbi-Event-Id"
H_AGGREGATE = "Symbi-Aggregate"
H_PRODUCER = "Symbi-Producer"
H_CORRELATION = "Symbi-Correlation-Id"
_TRACE_HEADERS = ("traceparent", "tracestate")


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class EventStore:
    """Appends sealed events for one producing service and loads verified histories."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        signer: Signer,
        producer: str,
        registry: KeyRegistry,
        datakeys: DataKeys,
        stream: str = EVENTS_STREAM,
        max_event_bytes: int = 1024 * 1024 - 4096,
        timeout: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self.nc = nc
        self.signer = signer
        self.producer = producer
        self.registry = registry
        self.datakeys = datakeys
        self.stream = stream
        self.max_event_bytes = max_event_bytes
        self.timeout = timeout
        self.attempts = attempts
        self._acks = AckRequests(nc, timeout)  # acks come back on this store's own reply subscription
        self._metrics: dict[str, tuple[Any, Any]] = {}  # aggregate type -> (appended counter, latency histogram)
        self._known = KnownSequences()
        self._saw = self._known.saw

    # --- write ----------------------------------------------------------------------------------

    def _check_signer(self) -> None:
        """Fail closed when the registry (which may change while the service runs) revoked our key."""
        key = self.registry.key(self.signer.key_id)
        if key is None or key.status == REVOKED:
            why = "is not in the key registry" if key is None else "was revoked"
            raise SigningKeyRefused(
                f"signing key {self.signer.key_id} of {self.producer} {why}; nothing is written until its "
                "replacement is in the service's key directory"
            )

    async def append(
        self,
        aggregate_type: str,
        aggregate_id: str,
        events: Sequence[E],
        codec: EventCodec[E],
        *,
        expected: ChainTip,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        data_key: str | None = None,
    ) -> list[Recorded[E]]:
        """Seal ``events`` onto the aggregate's chain after ``expected`` and store them atomically.

        ``data_key``: the name of the data key to seal with (e.g. :func:`~symbi_common.key_names.agent_data_key`);
        by default the aggregate's own, ``<type>.<id>``.

        Raises :class:`ConcurrencyConflict` if another writer appended first; nothing was stored then.
        """
        if not events:
            return []
        started = time.perf_counter()
        subject = subject_for(aggregate_type, aggregate_id)
        self._check_signer()
        if data_key is None:  # the aggregate's own key: its first append creates it without reading first
            key = await self.datakeys.current(f"{aggregate_type}.{aggregate_id}", new=expected.version == 0)
        else:
            key = await self.datakeys.current(data_key)
        sealed: list[tuple[bytes, EventHeader]] = []
        hashes: list[bytes] = []
        prev = expected.hash
        for i, event in enumerate(events):
            payload = codec.encode(event)
            data, header = seal(
                signer=self.signer,
                producer=self.producer,
                data_key=key,
                aggregate_type=aggregate_type,
                aggregate_id=aggregate_id,
                aggregate_version=expected.version + i + 1,
                event_type=event_type(event),
                schema_version=type(event).schema_version,
                payload=payload,
                prev_hash=prev,
                event_id=new_event_id(),
                causation_id=causation_id,
                correlation_id=correlation_id,
            )
            if len(data) > self.max_event_bytes:
                raise PayloadTooLarge(size=len(data), limit=self.max_event_bytes, what=f"event {header.event_type}")
            sealed.append((data, header))
            prev = event_hash(data)
            hashes.append(prev)
        seqs = await self._publish(subject, sealed, expected.sequence, headers or {})
        self._saw(subject, seqs[-1])
        metrics = self._metrics.get(aggregate_type)
        if metrics is None:
            metrics = self._metrics[aggregate_type] = (
                EVENTS_APPENDED.labels(self.producer, aggregate_type),
                EVENT_APPEND_SECONDS.labels(self.producer, aggregate_type),
            )
        metrics[0].inc(len(sealed))
        metrics[1].observe(time.perf_counter() - started)
        return [
            Recorded(event, header, seq, h)
            for event, (_, header), seq, h in zip(events, sealed, seqs, hashes, strict=True)
        ]

    def _headers(self, header: EventHeader, extra: Mapping[str, str]) -> dict[str, str]:
        h = {
            "Nats-Msg-Id": header.event_id,
            H_EVENT_ID: header.event_id,
            H_EVENT_TYPE: header.event_type,
            H_AGGREGATE: f"{header.aggregate_type}/{header.aggregate_id}",
            H_PRODUCER: header.producer,
        }
        if header.correlation_id:
            h[H_CORRELATION] = header.correlation_id
        h.update(extra)
        return h

    async def _publish(
        self,
        subject: str,
        sealed: list[tuple[bytes, EventHeader]],
        expected_seq: int,
        extra: Mapping[str, str],
    ) -> list[int]:
        # The W3C traceparent of the current span, outside the signed bytes: once for all events of the append.
        extra = inject_trace(dict(extra))
        unconfirmed = False  # an earlier attempt timed out: it may have landed
        for attempt in range(self.attempts):
            try:
                ack = await self._send_settled(subject, sealed, expected_seq, extra)
            except nats.errors.NoRespondersError:
                raise AppendFailed(
                    f"no stream stores {subject}; is JetStream up and the {self.stream} stream provisioned?"
                ) from None
            except (TimeoutError, nats.errors.TimeoutError):
                unconfirmed = True
                # Did it land? Look right after the expected sequence before trying again.
                try:
                    landed = await self._landed(subject, sealed, expected_seq)
                except SymbiError:
                    landed = None  # cannot tell yet; the retry below is safe (same Nats-Msg-Id)
                if landed is not None:
                    return landed
                if attempt + 1 == self.attempts:
                    raise AppendFailed(
                        f"append to {subject} timed out {self.attempts} times and could not be confirmed; "
                        "reload the aggregate to see whether it landed"
                    ) from None
                continue
            if ack.error is not None:
                code = int(ack.error.get("err_code", 0))
                desc = str(ack.error.get("description", ""))
                if code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                    m = _WRONG_LAST_RE.search(desc)
                    actual = int(m.group(1)) if m else None
                    if actual is not None:
                        self._saw(subject, actual)  # the subject's last sequence, as the leader has it
                    if unconfirmed:
                        # JetStream checks the expected sequence before de-duplicating, so a retry of an
                        # append that did land in the meantime looks like a conflict: check which it is.
                        landed = await self._landed(subject, sealed, expected_seq)
                        if landed is not None:
                            return landed
                    raise ConcurrencyConflict(
                        f"{subject} is no longer at sequence {expected_seq}: {desc}",
                        subject=subject,
                        expected=expected_seq,
                        actual=actual,
                    )
                raise AppendFailed(f"JetStream refused the append to {subject}: {desc} (code {code})", code=code)
            return list(range(ack.seq - len(sealed) + 1, ack.seq + 1))
        raise AppendFailed(f"append to {subject} failed")  # pragma: no cover - loop always returns or raises

    async def _send_settled(
        self,
        subject: str,
        sealed: list[tuple[bytes, EventHeader]],
        expected_seq: int,
        extra: Mapping[str, str],
    ) -> _PubAck:
        """:meth:`_send`, sent again while the leader answers 10164: another message of the subject is still
        going through Raft, and nothing of ours was stored. It settles within a Raft round; the answer after
        it (stored, or a 10071 conflict naming the subject's sequence) tells a conflict how far to catch up."""
        ack = await self._send(subject, sealed, expected_seq, extra)
        delay, deadline = 0.001, None
        while ack.error is not None and int(ack.error.get("err_code", 0)) == WRONG_LAST_SEQUENCE_IN_FLIGHT:
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout
            if loop.time() + delay > deadline:
                break  # still undecided: a conflict without a sequence
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            ack = await self._send(subject, sealed, expected_seq, extra)
        return ack

    async def _landed(
        self, subject: str, sealed: list[tuple[bytes, EventHeader]], expected_seq: int
    ) -> list[int] | None:
        """The stream sequences of ``sealed`` if they are stored right after ``expected_seq``; None if nothing
        is; :class:`ConcurrencyConflict` if another writer's event is there."""
        found: list[int] = []
        async for batch in read_subject_at_least(
            self.nc,
            self.stream,
            subject,
            after=expected_seq,
            at_least=self._known.of(subject),
            batch=len(sealed),
            timeout=self.timeout,
        ):
            first = batch[0]
            if not found and first.headers.get("Nats-Msg-Id") != sealed[0][1].event_id:
                self._saw(subject, first.sequence)
                raise ConcurrencyConflict(
                    f"{subject} moved on to sequence {first.sequence} while our append was unconfirmed",
                    subject=subject,
                    expected=expected_seq,
                    actual=first.sequence,
                )
            found.extend(m.sequence for m in batch)
            if len(found) >= len(sealed):
                break
        return found[: len(sealed)] if len(found) >= len(sealed) else None

    async def _send(
        self,
        subject: str,
        sealed: list[tuple[bytes, EventHeader]],
        expected_seq: int,
        extra: Mapping[str, str],
    ) -> _PubAck:
        if len(sealed) == 1:
            data, header = sealed[0]
            h = self._headers(header, extra)
            h["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
            msg = await self._acks.request(subject, data, h)
            return _ack_decoder.decode(msg.data)
        batch_id = new_event_id()
        n = len(sealed)
        for i, (data, header) in enumerate(sealed, 1):
            h = self._headers(header, extra)
            h["Nats-Batch-Id"] = batch_id
            h["Nats-Batch-Sequence"] = str(i)
            if i == 1:
                h["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
            if i < n:
                await self.nc.publish(subject, data, headers=h)
            else:
                h["Nats-Batch-Commit"] = "1"
                msg = await self._acks.request(subject, data, h)
                return _ack_decoder.decode(msg.data)
        raise AssertionError("unreachable")

    # --- read -----------------------------------------------------------------------------------

    async def load(
        self,
        aggregate_type: str,
        aggregate_id: str,
        codec: EventCodec[E],
        *,
        after: ChainTip | None = None,
    ) -> list[Recorded[E]]:
        """Every event of the aggregate after ``after``, verified, chain-checked, decrypted and decoded."""
        subject = subject_for(aggregate_type, aggregate_id)
        tip = after or ChainTip()
        out: list[Recorded[E]] = []
        async for batch in read_subject_at_least(
            self.nc, self.stream, subject, after=tip.sequence, at_least=self._known.of(subject), timeout=self.timeout
        ):
            for raw in batch:
                opened = open_envelope(raw.data, subject=raw.subject, sequence=raw.sequence, registry=self.registry)
                check_link(tip, opened)
                recorded = await self._decode(opened, codec)
                if "traceparent" in raw.headers:
                    trace = {k: raw.headers[k] for k in _TRACE_HEADERS if k in raw.headers}
                    recorded = dataclasses.replace(recorded, trace=trace)
                out.append(recorded)
                tip = opened.tip
        if out:
            self._saw(subject, tip.sequence)  # monotonic reads: a later load does not go back before this one
        return out

    async def _decode(self, opened: OpenedEvent, codec: EventCodec[E]) -> Recorded[E]:
        return await decode_opened(opened, self.datakeys, codec)

    async def open_one(self, data: bytes, subject: str, sequence: int, codec: EventCodec[E]) -> Recorded[E]:
        """Verify (no chain check), decrypt and decode one stored message, e.g. in a projection."""
        opened = open_envelope(data, subject=subject, sequence=sequence, registry=self.registry)
        return await self._decode(opened, codec)


def is_retryable(err: BaseException) -> bool:
    return isinstance(err, ConcurrencyConflict) or (isinstance(err, SymbiError) and err.http_status in (503, 504))
