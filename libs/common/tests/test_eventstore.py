"""The event store against a real JetStream server: appends, loads, atomicity, de-duplication, keys, tampering."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from symbi_common.crypto import AeadKey, Signer
from symbi_common.envelope import ZERO_HASH, SealedEvent, decode_sealed, encode_sealed, subject_for
from symbi_common.errors import (
    AppendFailed,
    BadSignature,
    BrokenChain,
    ConcurrencyConflict,
    DataKeyDestroyed,
    DecryptionFailed,
    IntegrityError,
    MalformedEvent,
    PayloadTooLarge,
    SubjectMismatch,
    UnauthorisedSigner,
    UnknownSigningKey,
    VersionGap,
)
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import H_AGGREGATE, H_EVENT_ID, H_EVENT_TYPE, H_PRODUCER, EventStore, is_retryable
from symbi_common.sealing import NEW_AGGREGATE, ChainTip, check_link, open_envelope, seal
from symbi_common.streams import EVENTS_STREAM, last_on_subject, read_subject

MakeStore = Callable[..., Awaitable[EventStore]]


class Noted(Event, tag="test.noted"):
    text: str
    blob: bytes = b""


class Closed(Event, tag="test.closed"):
    pass


codec: EventCodec[Event] = EventCodec([Noted, Closed])


def new_id() -> str:
    return uuid.uuid4().hex[:12]


async def stored_count(js: JetStreamContext) -> int:
    info = await js.stream_info(EVENTS_STREAM)
    return int(info.state.messages)


async def test_append_and_load_round_trip(make_store: MakeStore, provisioned: NatsClient) -> None:
    store = await make_store()
    agg = new_id()
    first = await store.append("agent", agg, [Noted(text="one")], codec, expected=NEW_AGGREGATE, correlation_id="corr")
    assert len(first) == 1
    assert first[0].header.aggregate_version == 1
    assert first[0].header.prev_hash == ZERO_HASH
    more = await store.append(
        "agent", agg, [Noted(text="two"), Closed()], codec, expected=first[0].tip, causation_id="cause"
    )
    assert [r.header.aggregate_version for r in more] == [2, 3]
    assert more[0].header.prev_hash == first[0].hash
    assert more[1].header.prev_hash == more[0].hash

    for reader in (store, await make_store()):  # the writer, and a fresh process with an empty key cache
        loaded = await reader.load("agent", agg, codec)
        assert [r.event for r in loaded] == [Noted(text="one"), Noted(text="two"), Closed()]
        assert [(r.sequence, r.hash, r.header) for r in loaded] == [
            (r.sequence, r.hash, r.header) for r in first + more
        ]
    assert loaded[0].header.correlation_id == "corr"
    assert loaded[1].header.causation_id == "cause"
    assert loaded[2].header.event_type == "test.closed"

    tail = await store.load("agent", agg, codec, after=first[0].tip)
    assert [r.event for r in tail] == [Noted(text="two"), Closed()]
    assert await store.load("agent", new_id(), codec) == []
    assert await store.append("agent", agg, [], codec, expected=more[-1].tip) == []

    # Clear headers for ordinary NATS tools (not trusted by verifiers).
    raw = await last_on_subject(provisioned, EVENTS_STREAM, subject_for("agent", agg))
    assert raw is not None
    assert raw.headers[H_EVENT_TYPE] == "test.closed"
    assert raw.headers[H_EVENT_ID] == raw.headers["Nats-Msg-Id"] == loaded[2].header.event_id
    assert raw.headers[H_AGGREGATE] == f"agent/{agg}"
    assert raw.headers[H_PRODUCER] == "lifecycle"


async def test_multi_event_append_is_atomic(make_store: MakeStore, js: JetStreamContext) -> None:
    store = await make_store()
    agg = new_id()
    recs = await store.append("agent", agg, [Noted(text=str(i)) for i in range(3)], codec, expected=NEW_AGGREGATE)
    seqs = [r.sequence for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert await stored_count(js) == 3

    # A second writer with a stale tip: nothing of its batch is stored.
    other = await make_store()
    with pytest.raises(ConcurrencyConflict) as exc:
        await other.append("agent", agg, [Noted(text="x"), Noted(text="y")], codec, expected=NEW_AGGREGATE)
    assert exc.value.expected == 0
    assert exc.value.actual == seqs[-1]
    assert is_retryable(exc.value)
    assert await stored_count(js) == 3
    # Also stale in the middle of the history.
    with pytest.raises(ConcurrencyConflict):
        await other.append("agent", agg, [Noted(text="x"), Noted(text="y")], codec, expected=recs[1].tip)
    assert await stored_count(js) == 3
    assert [r.event for r in await other.load("agent", agg, codec)] == [Noted(text=str(i)) for i in range(3)]

    # Another aggregate in between does not disturb the per-aggregate expectation.
    await store.append("agent", new_id(), [Noted(text="elsewhere")], codec, expected=NEW_AGGREGATE)
    tail = await other.append("agent", agg, [Noted(text="x"), Noted(text="y")], codec, expected=recs[-1].tip)
    assert [r.header.aggregate_version for r in tail] == [4, 5]
    assert await stored_count(js) == 6
    assert len(await store.load("agent", agg, codec)) == 5


async def test_single_event_stale_tip_conflicts(make_store: MakeStore, js: JetStreamContext) -> None:
    store = await make_store()
    agg = new_id()
    await store.append("agent", agg, [Noted(text="a")], codec, expected=NEW_AGGREGATE)
    with pytest.raises(ConcurrencyConflict, match="no longer at sequence 0"):
        await store.append("agent", agg, [Noted(text="b")], codec, expected=NEW_AGGREGATE)
    assert await stored_count(js) == 1


async def test_duplicate_publish_is_stored_once(
    make_store: MakeStore, provisioned: NatsClient, js: JetStreamContext
) -> None:
    store = await make_store()
    agg = new_id()
    (rec,) = await store.append("agent", agg, [Noted(text="once")], codec, expected=NEW_AGGREGATE)
    raw = await last_on_subject(provisioned, EVENTS_STREAM, subject_for("agent", agg))
    assert raw is not None
    # A retry after a lost ack: same bytes, same Nats-Msg-Id.
    for _ in range(2):
        ack = await js.publish(raw.subject, raw.data, headers={"Nats-Msg-Id": rec.header.event_id})
        assert ack.duplicate
        assert ack.seq == rec.sequence
    assert await stored_count(js) == 1
    assert [r.event for r in await store.load("agent", agg, codec)] == [Noted(text="once")]


async def test_payload_too_large(make_store: MakeStore, js: JetStreamContext) -> None:
    store = await make_store()
    agg = new_id()
    with pytest.raises(PayloadTooLarge) as exc:
        await store.append(
            "agent", agg, [Noted(text="big", blob=os.urandom(store.max_event_bytes))], codec, expected=NEW_AGGREGATE
        )
    assert exc.value.limit == store.max_event_bytes
    assert exc.value.size > exc.value.limit
    assert "test.noted" in str(exc.value)
    # One oversized event in a batch: nothing of the batch is stored.
    small = await make_store(max_event_bytes=2000)
    with pytest.raises(PayloadTooLarge):
        await small.append(
            "agent", agg, [Noted(text="ok"), Noted(text="x", blob=bytes(2000))], codec, expected=NEW_AGGREGATE
        )
    assert await stored_count(js) == 0
    # Just under the limit is fine.
    (rec,) = await store.append(
        "agent", agg, [Noted(text="fits", blob=os.urandom(store.max_event_bytes - 1000))], codec, expected=NEW_AGGREGATE
    )
    assert len((await store.load("agent", agg, codec))[0].event.blob) == store.max_event_bytes - 1000  # type: ignore[attr-defined]
    assert rec.header.aggregate_version == 1


async def test_append_without_stream_is_a_typed_error(
    nc: NatsClient, make_store: MakeStore, js: JetStreamContext
) -> None:
    store = await make_store()
    await js.delete_stream(EVENTS_STREAM)
    with pytest.raises(AppendFailed, match="provisioned"):
        await store.append("agent", new_id(), [Noted(text="x")], codec, expected=NEW_AGGREGATE)


async def test_load_reads_beyond_one_batch(make_store: MakeStore, provisioned: NatsClient) -> None:
    store = await make_store()
    agg = new_id()
    tip = NEW_AGGREGATE
    for i in range(5):
        recs = await store.append("agent", agg, [Noted(text=f"{i}.{j}") for j in range(5)], codec, expected=tip)
        tip = recs[-1].tip
    loaded = await store.load("agent", agg, codec)
    assert [r.header.aggregate_version for r in loaded] == list(range(1, 26))
    batches = [b async for b in read_subject(provisioned, EVENTS_STREAM, subject_for("agent", agg), batch=7)]
    assert [len(b) for b in batches] == [7, 7, 7, 4]
    assert [m.sequence for b in batches for m in b] == [r.sequence for r in loaded]


# --- data keys -----------------------------------------------------------------------------------


async def test_data_key_rotation_keeps_old_events_readable(make_store: MakeStore) -> None:
    store = await make_store()
    agg = new_id()
    old = await store.append("agent", agg, [Noted(text="a"), Noted(text="b")], codec, expected=NEW_AGGREGATE)
    assert await store.datakeys.rotate(f"agent.{agg}") == f"agent.{agg}/2"
    new = await store.append("agent", agg, [Noted(text="c"), Noted(text="d")], codec, expected=old[-1].tip)
    assert [r.header.data_key_id for r in old + new] == [f"agent.{agg}/{g}" for g in (1, 1, 2, 2)]
    for reader in (store, await make_store()):
        loaded = await reader.load("agent", agg, codec)
        assert [r.event.text for r in loaded] == ["a", "b", "c", "d"]  # type: ignore[attr-defined]
        assert [r.header.data_key_id for r in loaded] == [r.header.data_key_id for r in old + new]


async def test_a_data_key_worn_by_its_encryptions_is_rotated_on_append(make_store: MakeStore) -> None:
    store = await make_store()
    store.datakeys.rotate_after = 2
    agg = new_id()
    recs = await store.append("agent", agg, [Noted(text="a")], codec, expected=NEW_AGGREGATE)
    for text in "bcd":
        recs += await store.append("agent", agg, [Noted(text=text)], codec, expected=recs[-1].tip)
    assert [r.header.data_key_id for r in recs] == [f"agent.{agg}/{g}" for g in (1, 1, 2, 2)]
    loaded = await (await make_store()).load("agent", agg, codec)
    assert [r.event.text for r in loaded] == ["a", "b", "c", "d"]  # type: ignore[attr-defined]


async def test_destroyed_data_key_shreds_payloads_but_chain_verifies(
    make_store: MakeStore, provisioned: NatsClient
) -> None:
    store = await make_store()
    agg = new_id()
    recs = await store.append("agent", agg, [Noted(text="secret"), Noted(text="more")], codec, expected=NEW_AGGREGATE)
    await store.datakeys.rotate(f"agent.{agg}")
    recs += await store.append("agent", agg, [Closed()], codec, expected=recs[-1].tip)
    await store.datakeys.destroy(f"agent.{agg}")

    for reader in (store, await make_store()):
        with pytest.raises(DataKeyDestroyed) as exc:
            await reader.load("agent", agg, codec)
        assert exc.value.http_status == 410

    # The signed, hash-chained envelopes still verify without any data key.
    subject = subject_for("agent", agg)
    tip = ChainTip()
    async for batch in read_subject(provisioned, EVENTS_STREAM, subject):
        for raw in batch:
            opened = open_envelope(raw.data, subject=raw.subject, sequence=raw.sequence, registry=store.registry)
            check_link(tip, opened)
            tip = opened.tip
    assert tip == recs[-1].tip

    # The shredded aggregate never gets a new key under a reused key id.
    with pytest.raises(DataKeyDestroyed):
        await (await make_store()).append("agent", agg, [Noted(text="after")], codec, expected=tip)


# --- tampering, seen through the store -----------------------------------------------------------


def tampered(
    kind: str, *, first: Any, key: AeadKey, lifecycle: Signer, policy: Signer, agg: str
) -> tuple[bytes, type[IntegrityError]]:
    """Stored bytes for a second event of ``agg`` (after ``first``), broken in the way ``kind`` says."""

    def make(**changes: Any) -> bytes:
        args: dict[str, Any] = {
            "signer": lifecycle,
            "producer": "lifecycle",
            "data_key": key,
            "aggregate_type": "agent",
            "aggregate_id": agg,
            "aggregate_version": 2,
            "event_type": "test.noted",
            "schema_version": 1,
            "payload": codec.encode(Noted(text="forged")),
            "prev_hash": first.hash,
        }
        args.update(changes)
        return seal(**args)[0]

    if kind == "garbage":
        return b"\x93garbage", MalformedEvent
    if kind == "subject":
        return make(aggregate_id=agg + "x"), SubjectMismatch
    if kind == "unknown_key":
        return make(signer=Signer.generate()), UnknownSigningKey
    if kind == "unauthorised":
        return make(signer=policy), UnauthorisedSigner
    if kind == "signature":
        sealed = decode_sealed(make())
        return encode_sealed(SealedEvent(sealed.header, sealed.ciphertext, bytes(64))), BadSignature
    if kind == "chain":
        return make(prev_hash=bytes(32)), BrokenChain
    if kind == "gap":
        return make(aggregate_version=3), VersionGap
    if kind == "data_key":
        return make(data_key=AeadKey(key.key_id, os.urandom(32))), DecryptionFailed
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["garbage", "subject", "unknown_key", "unauthorised", "signature", "chain", "gap", "data_key"]
)
async def test_store_detects_tampering(
    kind: str, make_store: MakeStore, js: JetStreamContext, signer_for: Callable[[str], Signer]
) -> None:
    store = await make_store()
    agg = new_id()
    (first,) = await store.append("agent", agg, [Noted(text="genuine")], codec, expected=NEW_AGGREGATE)
    key = await store.datakeys.current(f"agent.{agg}")
    data, error = tampered(
        kind, first=first, key=key, lifecycle=signer_for("lifecycle"), policy=signer_for("policy"), agg=agg
    )
    # Someone with raw NATS access writes the bytes straight into the stream.
    ack = await js.publish(subject_for("agent", agg), data)
    with pytest.raises(error) as exc:
        await (await make_store()).load("agent", agg, codec)
    assert exc.value.sequence == ack.seq
    assert exc.value.subject == subject_for("agent", agg)


async def test_open_one_verifies_without_chain(make_store: MakeStore, provisioned: NatsClient) -> None:
    store = await make_store()
    agg = new_id()
    recs = await store.append("agent", agg, [Noted(text="a"), Noted(text="b")], codec, expected=NEW_AGGREGATE)
    raw = await last_on_subject(provisioned, EVENTS_STREAM, subject_for("agent", agg))
    assert raw is not None
    got = await store.open_one(raw.data, raw.subject, raw.sequence, codec)
    assert got.event == Noted(text="b")
    assert got.hash == recs[-1].hash
    with pytest.raises(SubjectMismatch):
        await store.open_one(raw.data, "evt.agent.other", raw.sequence, codec)


async def test_a_load_carries_the_trace_each_event_was_appended_in(make_store: MakeStore) -> None:
    store = await make_store()
    agg = new_id()
    parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    first = await store.append("agent", agg, [Noted(text="plain")], codec, expected=NEW_AGGREGATE)
    await store.append(
        "agent", agg, [Noted(text="in a trace")], codec, expected=first[0].tip, headers={"traceparent": parent}
    )
    untraced, traced = await (await make_store()).load("agent", agg, codec)
    assert untraced.trace is None  # no trace context active when it was appended: none is made up
    assert traced.trace == {"traceparent": parent}
