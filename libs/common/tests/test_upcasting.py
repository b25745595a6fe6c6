"""Event schema evolution: events written by the previous version are upcast on decode, before ``apply``.

The old events are real: sealed, signed, encrypted and stored in JetStream by an event store whose codec
knows only version 1 (as the previous release of a service would), then read back by a store whose codec
has version 2 or 3 and the upcasters.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec
import pytest
from symbi_common.aggregate import Repository
from symbi_common.domain import AggregateType
from symbi_common.errors import MalformedEvent, UnknownEventType
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.sealing import NEW_AGGREGATE

MakeStore = Callable[..., Awaitable[EventStore]]
TAG = "test.note_written"
AGGREGATE = "agent"  # a subject the lifecycle key may sign


class NoteWrittenV1(Event, frozen=True, tag=TAG):
    """Version 1, as the previous release wrote it: one text, an optional author."""

    text: str
    by: str = ""


class NoteWrittenV2(Event, frozen=True, tag=TAG):
    """Version 2: the text became lines (a changed type and name) and the author is required."""

    schema_version: ClassVar[int] = 2
    lines: tuple[str, ...]
    author: str


class NoteWrittenV3(Event, frozen=True, tag=TAG):
    """Version 3: the author became a structure."""

    schema_version: ClassVar[int] = 3
    lines: tuple[str, ...]
    author: dict[str, str]


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    text = payload.pop("text")
    return {**payload, "lines": text.split("\n"), "author": payload.pop("by", "") or "unknown"}


def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "author": {"name": payload["author"]}}


V1: EventCodec[NoteWrittenV1] = EventCodec([NoteWrittenV1])
V2: EventCodec[NoteWrittenV2] = EventCodec([NoteWrittenV2], upcasters={(TAG, 1): v1_to_v2})
V3: EventCodec[NoteWrittenV3] = EventCodec([NoteWrittenV3], upcasters={(TAG, 1): v1_to_v2, (TAG, 2): v2_to_v3})


def new_id() -> str:
    return uuid.uuid4().hex[:12]


async def write_v1(store: EventStore, note_id: str) -> None:
    """The fixture: what the previous version stored (real sealed events, schema version 1)."""
    await store.append(
        AGGREGATE,
        note_id,
        [NoteWrittenV1(text="first\nsecond", by="ada"), NoteWrittenV1(text="third")],
        V1,
        expected=NEW_AGGREGATE,
    )


async def test_events_of_the_previous_version_decode_as_the_current_one(make_store: MakeStore) -> None:
    writer, reader = await make_store("lifecycle"), await make_store("lifecycle")
    note = new_id()
    await write_v1(writer, note)

    old = await reader.load(AGGREGATE, note, V1)
    assert [r.header.schema_version for r in old] == [1, 1]
    assert [r.event for r in old] == [NoteWrittenV1(text="first\nsecond", by="ada"), NoteWrittenV1(text="third")]

    loaded = await reader.load(AGGREGATE, note, V2)
    assert [r.event for r in loaded] == [
        NoteWrittenV2(lines=("first", "second"), author="ada"),
        NoteWrittenV2(lines=("third",), author="unknown"),
    ]
    assert [r.header.schema_version for r in loaded] == [1, 1]  # the stored events are unchanged


async def test_a_stream_of_mixed_versions_is_upcast_step_by_step_before_apply(make_store: MakeStore) -> None:
    store = await make_store("lifecycle")
    note = new_id()
    await write_v1(store, note)
    tip = (await store.load(AGGREGATE, note, V2))[-1].tip
    await store.append(AGGREGATE, note, [NoteWrittenV2(lines=("fourth",), author="grace")], V2, expected=tip)

    def apply(state: tuple[str, ...], event: NoteWrittenV3) -> tuple[str, ...]:
        assert isinstance(event, NoteWrittenV3)  # apply only ever sees the current version
        return (*state, *(f"{event.author['name']}: {line}" for line in event.lines))

    def decide(state: tuple[str, ...], command: str) -> list[NoteWrittenV3]:
        return [NoteWrittenV3(lines=(command,), author={"name": "linus"})]

    notes: AggregateType[tuple[str, ...], str, NoteWrittenV3] = AggregateType(
        AGGREGATE, V3, tuple, lambda _id: (), apply, decide
    )
    repository = Repository(await make_store("lifecycle"), notes)
    loaded = await repository.load(note)
    assert loaded.state == ("ada: first", "ada: second", "unknown: third", "grace: fourth")
    assert loaded.tip.version == 3

    after, records = await repository.execute(note, "fifth")
    assert after.state[-1] == "linus: fifth"
    assert records[0].header.schema_version == 3


async def test_an_event_newer_than_the_reader_is_refused(make_store: MakeStore) -> None:
    store = await make_store("lifecycle")
    note = new_id()
    await store.append(AGGREGATE, note, [NoteWrittenV2(lines=("x",), author="a")], V2, expected=NEW_AGGREGATE)
    with pytest.raises(UnknownEventType, match="version 2 is newer than this service reads"):
        await store.load(AGGREGATE, note, V1)


def test_a_payload_that_does_not_fit_after_upcasting_is_malformed() -> None:
    without_text = msgspec.msgpack.encode({"type": TAG, "by": "ada"})
    with pytest.raises(MalformedEvent, match="does not upcast to version 2"):
        V2.decode(without_text, event_type=TAG, schema_version=1)
    other_type = msgspec.msgpack.encode({"type": "test.other", "text": "x"})
    with pytest.raises(MalformedEvent, match="the header says"):
        V2.decode(other_type, event_type=TAG, schema_version=1)
    with pytest.raises(MalformedEvent, match="schema version 0"):
        V2.decode(msgspec.msgpack.encode({"type": TAG}), event_type=TAG, schema_version=0)


def test_a_codec_refuses_a_gap_in_the_upcasters_or_a_stray_one() -> None:
    with pytest.raises(ValueError, match=r"no upcaster from version\(s\) \[1\]"):
        EventCodec([NoteWrittenV2])
    with pytest.raises(ValueError, match=r"no upcaster from version\(s\) \[2\]"):
        EventCodec([NoteWrittenV3], upcasters={(TAG, 1): v1_to_v2})
    with pytest.raises(ValueError, match="lifts no version"):
        EventCodec([NoteWrittenV1], upcasters={(TAG, 1): v1_to_v2})


def test_the_current_version_decodes_without_upcasting() -> None:
    event = NoteWrittenV2(lines=("a",), author="b")
    assert V2.decode(V2.encode(event), event_type=TAG, schema_version=2) == event
    assert V2.decode(V2.encode(event), event_type=TAG) == event
