"""The stored event format: header and sealed-event encoding, and the event codec."""

from __future__ import annotations

import contextlib
import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.envelope import (
    ENVELOPE_VERSION,
    ZERO_HASH,
    EventHeader,
    SealedEvent,
    decode_header,
    decode_sealed,
    encode_header,
    encode_sealed,
    event_hash,
    signed_message,
    subject_for,
)
from symbi_common.errors import MalformedEvent, UnknownEventType
from symbi_common.events import Event, EventCodec, event_type


class Opened(Event, tag="thing.opened"):
    name: str
    size: int = 0


class Closed(Event, tag="thing.closed"):
    reason: str | None = None


class Untagged(msgspec.Struct, frozen=True):
    x: int


text = st.text(max_size=40)
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=24)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

headers = st.builds(
    EventHeader,
    version=st.just(ENVELOPE_VERSION),
    event_id=text,
    aggregate_type=token,
    aggregate_id=token,
    aggregate_version=st.integers(min_value=1, max_value=2**63 - 1),
    event_type=text,
    schema_version=int64,
    occurred_at=st.integers(min_value=0, max_value=2**64 - 1),
    producer=text,
    signing_key_id=text,
    prev_hash=st.binary(min_size=32, max_size=32),
    causation_id=st.none() | text,
    correlation_id=st.none() | text,
    data_key_id=text,
    nonce=st.binary(min_size=12, max_size=12),
)


def header(**changes: object) -> EventHeader:
    base = EventHeader(
        version=ENVELOPE_VERSION,
        event_id="e1",
        aggregate_type="agent",
        aggregate_id="a1",
        aggregate_version=1,
        event_type="thing.opened",
        schema_version=1,
        occurred_at=1,
        producer="lifecycle",
        signing_key_id="k",
        prev_hash=ZERO_HASH,
        causation_id=None,
        correlation_id=None,
        data_key_id="agent.a1/1",
        nonce=bytes(12),
    )
    return msgspec.structs.replace(base, **changes)


@settings(max_examples=300)
@given(headers)
def test_header_round_trip(h: EventHeader) -> None:
    data = encode_header(h)
    assert decode_header(data) == h
    assert encode_header(decode_header(data)) == data  # canonical: re-encoding gives the same bytes


@settings(max_examples=200)
@given(st.binary(max_size=300), st.binary(max_size=2000), st.binary(min_size=64, max_size=64))
def test_sealed_round_trip(h: bytes, ciphertext: bytes, signature: bytes) -> None:
    sealed = SealedEvent(h, ciphertext, signature)
    assert decode_sealed(encode_sealed(sealed)) == sealed


@given(st.binary(max_size=200))
def test_garbage_is_malformed_never_another_exception(data: bytes) -> None:
    with contextlib.suppress(MalformedEvent):
        decode_header(data)
    with contextlib.suppress(MalformedEvent):
        decode_sealed(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgspec.msgpack.encode([b"h", b"c"]),  # two elements
        msgspec.msgpack.encode([b"h", b"c", b"s" * 63]),  # short signature
        msgspec.msgpack.encode(["h", "c", "s" * 64]),  # strings, not bytes
        msgspec.msgpack.encode([b"h", b"c", b"s" * 64]) + b"\x00",  # trailing bytes
    ],
)
def test_malformed_sealed(data: bytes) -> None:
    with pytest.raises(MalformedEvent) as exc:
        decode_sealed(data, sequence=7, subject="evt.agent.a1")
    assert exc.value.sequence == 7
    assert exc.value.subject == "evt.agent.a1"
    assert "evt.agent.a1" in str(exc.value)


@pytest.mark.parametrize(
    "data",
    [
        encode_header(header(version=2)),
        encode_header(header(prev_hash=b"short")),
        encode_header(header(nonce=bytes(16))),
        msgspec.msgpack.encode({**msgspec.structs.asdict(header()), "extra": 1}),  # unknown field
        msgspec.msgpack.encode({"version": 1}),  # missing fields
        b"\xd9\x03\xff\xfe\xfd",  # invalid UTF-8 in a string
    ],
)
def test_malformed_header(data: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_header(data)


def test_subject_and_hash() -> None:
    assert subject_for("agent", "a1") == "evt.agent.a1"
    assert header().subject == "evt.agent.a1"
    assert event_hash(b"abc") == hashlib.sha256(b"abc").digest()
    # The signed message is unambiguous: the header length is part of it.
    assert signed_message(b"ab", b"c") != signed_message(b"a", b"bc")


# --- event codec ---------------------------------------------------------------------------------


def test_codec_round_trip() -> None:
    codec = EventCodec([Opened, Closed])
    for event in (Opened(name="x", size=3), Closed(), Closed(reason="done")):
        data = codec.encode(event)
        assert codec.decode(data, event_type=event_type(event)) == event
    assert event_type(Opened(name="x")) == "thing.opened"
    assert codec.tags == {"thing.opened", "thing.closed"}


def test_codec_single_type() -> None:
    codec = EventCodec([Opened])
    assert codec.decode(codec.encode(Opened(name="n")), event_type="thing.opened") == Opened(name="n")


def test_codec_errors() -> None:
    codec = EventCodec([Opened, Closed])
    with pytest.raises(UnknownEventType):
        codec.decode(codec.encode(Opened(name="x")), event_type="thing.unknown", sequence=1, subject="evt.t.x")
    with pytest.raises(MalformedEvent, match=r"header says thing\.closed"):
        codec.decode(codec.encode(Opened(name="x")), event_type="thing.closed")
    with pytest.raises(MalformedEvent):
        codec.decode(b"\xff\xff", event_type="thing.opened")
    with pytest.raises(MalformedEvent):
        codec.decode(msgspec.msgpack.encode({"type": "thing.opened", "name": 5}), event_type="thing.opened")
    with pytest.raises(ValueError, match="at least one"):
        EventCodec([])
    with pytest.raises(TypeError, match="no string tag"):
        event_type(Untagged(x=1))  # type: ignore[arg-type]


def test_codec_tolerates_added_fields() -> None:
    """Events evolve by adding fields with defaults: old readers ignore unknown fields."""
    data = msgspec.msgpack.encode({"type": "thing.opened", "name": "x", "size": 1, "added_later": True})
    assert EventCodec([Opened]).decode(data, event_type="thing.opened") == Opened(name="x", size=1)
