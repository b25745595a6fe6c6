"""Pure decide/apply of the memory and knowledge aggregates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_context.domain import (
    KNOWLEDGE,
    MEMORY,
    Chunk,
    ContextState,
    Forget,
    IngestDocument,
    KnowledgeForgotten,
    KnowledgeIngested,
    MemoryForgotten,
    MemoryStored,
    Origin,
    StoreMemories,
)
from symbi_context.errors import DocumentConflict, InvalidContext, MemoryConflict, UnknownMemory


def memory(i: int, kind: str = "short_term", task: str | None = None) -> MemoryStored:
    return MemoryStored(
        memory_id=f"m{i}",
        kind=kind,  # type: ignore[arg-type]
        text=f"memory {i}",
        vector=b"\0" * 16,
        model="test",
        created_at=float(i),
        origin=Origin(task_id=task),
    )


def fold(state: ContextState, events: list) -> ContextState:  # type: ignore[type-arg]
    for e in events:
        state = MEMORY.apply(state, e)
    return state


def test_short_term_is_bounded_oldest_evicted_in_the_same_append() -> None:
    state = MEMORY.initial("ada")
    for i in range(3):
        state = fold(state, MEMORY.decide(state, StoreMemories(memories=(memory(i),), short_term_capacity=3)))
    assert state.short_term == ("m0", "m1", "m2")
    events = MEMORY.decide(
        state, StoreMemories(memories=(memory(3), memory(4, "long_term"), memory(5)), short_term_capacity=3)
    )
    assert isinstance(events[-1], MemoryForgotten)
    assert events[-1].memory_ids == ("m0", "m1")
    assert events[-1].reason == "evicted"
    state = fold(state, events)
    assert state.short_term == ("m2", "m3", "m5")
    assert set(state.live) == {"m2", "m3", "m4", "m5"}


def test_working_memory_needs_a_task_and_ids_are_unique() -> None:
    state = MEMORY.initial("ada")
    with pytest.raises(InvalidContext, match=r"origin\.task_id"):
        MEMORY.decide(state, StoreMemories(memories=(memory(1, "working"),), short_term_capacity=5))
    state = fold(
        state, MEMORY.decide(state, StoreMemories(memories=(memory(1, "working", "t"),), short_term_capacity=5))
    )
    assert state.live["m1"].task_id == "t"
    with pytest.raises(MemoryConflict, match="kind, origin") as caught:
        MEMORY.decide(state, StoreMemories(memories=(memory(1, "long_term"),), short_term_capacity=5))
    assert caught.value.differs == ["kind", "origin"]
    twice = StoreMemories(memories=(memory(2), memory(2)), short_term_capacity=5)
    with pytest.raises(InvalidContext, match="given twice"):
        MEMORY.decide(state, twice)


def test_storing_a_stored_memory_again_is_a_no_op_and_other_content_a_conflict() -> None:
    state = fold(MEMORY.initial("ada"), [memory(1, "short_term")])
    retry = msgspec.structs.replace(memory(1, "short_term"), created_at=99.0, vector=b"\1" * 16)
    # Times and vectors are made anew by a retry; the content is the same, so nothing is appended.
    assert MEMORY.decide(state, StoreMemories(memories=(retry,), short_term_capacity=1)) == []
    # A batch retry stores only the new memory, and bounds short-term memory counting only what is new.
    events = MEMORY.decide(state, StoreMemories(memories=(retry, memory(2)), short_term_capacity=2))
    assert events == [memory(2)]
    for change, differs in [
        ({"text": "other"}, ["text"]),
        ({"tags": ("t",)}, ["tags"]),
        ({"metadata": {"k": 1}}, ["metadata"]),
        ({"origin": Origin(message_id="x")}, ["origin"]),
    ]:
        changed = msgspec.structs.replace(memory(1), **change)
        with pytest.raises(MemoryConflict) as caught:
            MEMORY.decide(state, StoreMemories(memories=(changed,), short_term_capacity=5))
        assert (caught.value.item_id, caught.value.differs, caught.value.code) == ("m1", differs, "memory_conflict")
    # A memory from a snapshot taken before digests were kept cannot be compared: refused, not guessed.
    old = ContextState(owner_id="ada", live={"m1": msgspec.structs.replace(state.live["m1"], digest=None)})
    with pytest.raises(MemoryConflict, match="cannot be compared"):
        MEMORY.decide(old, StoreMemories(memories=(memory(1),), short_term_capacity=5))


def test_forget() -> None:
    state = fold(MEMORY.initial("ada"), [memory(1, "long_term"), memory(2, "long_term")])
    with pytest.raises(UnknownMemory, match="m9"):
        MEMORY.decide(state, Forget(ids=("m1", "m9")))
    assert MEMORY.decide(state, Forget(ids=("m9",), missing_ok=True)) == []
    events = MEMORY.decide(state, Forget(ids=("m1", "m1", "m9"), missing_ok=True))
    assert events == [MemoryForgotten(memory_ids=("m1",), reason="request")]
    assert set(fold(state, events).live) == {"m2"}
    with pytest.raises(InvalidContext):
        MEMORY.decide(state, Forget(ids=()))


def document(texts: list[list[str]], document_id: str = "d1", **fields: Any) -> tuple[KnowledgeIngested, ...]:
    """A document stored as one part per list of chunk texts."""
    return tuple(
        KnowledgeIngested(
            **{
                "document_id": document_id,
                "title": "T",
                "source": "",
                "media_type": "text/plain",
                "model": "m",
                "created_at": 5.0,
                "part": i,
                "parts": len(texts),
                "chunks": tuple(
                    Chunk(chunk_id=f"c{i}-{j}", position=j, text=t, vector=b"") for j, t in enumerate(part)
                ),
                **fields,
            }
        )
        for i, part in enumerate(texts)
    )


def fold_knowledge(state: ContextState, events: Sequence[Any]) -> ContextState:
    for e in events:
        state = KNOWLEDGE.apply(state, e)
    return state


def test_knowledge_documents() -> None:
    (part,) = document([["x"]])
    state = KNOWLEDGE.initial("kb")
    events = KNOWLEDGE.decide(state, IngestDocument(parts=(part,)))
    state = KNOWLEDGE.apply(state, events[0])
    assert state.live["d1"].created_at == 5.0
    gone = KNOWLEDGE.decide(state, Forget(ids=("d1",), reason="retention"))
    assert gone == [KnowledgeForgotten(document_ids=("d1",), reason="retention")]
    assert KNOWLEDGE.apply(state, gone[0]).live == {}


def test_ingesting_a_stored_document_again_is_a_no_op_and_other_content_a_conflict() -> None:
    texts = [["alpha", "beta"], ["gamma"]]  # two parts, as a document of more than CHUNKS_PER_EVENT chunks
    stored = document(texts)
    state = fold_knowledge(
        KNOWLEDGE.initial("kb"), KNOWLEDGE.decide(KNOWLEDGE.initial("kb"), IngestDocument(parts=stored))
    )
    # Times, vectors and the model are made anew by a retry; the content is the same, so nothing is appended.
    retry = document(texts, created_at=99.0, model="other")
    assert KNOWLEDGE.decide(state, IngestDocument(parts=retry)) == []
    for change, differs in [
        ({"title": "U"}, ["title"]),
        ({"source": "s"}, ["source"]),
        ({"tags": ("t",), "metadata": {"k": 1}}, ["tags", "metadata"]),
        ({"origin": Origin(task_id="t2")}, ["origin"]),
    ]:
        with pytest.raises(DocumentConflict) as caught:
            KNOWLEDGE.decide(state, IngestDocument(parts=document(texts, **change)))
        assert (caught.value.item_id, caught.value.differs, caught.value.code) == (
            "d1",
            differs,
            "document_conflict",
        )
    # Any chunk of any part changed, one left out or added: the text differs.
    for other in ([["alpha", "beta"], ["delta"]], [["alpha", "beta"]], [["alpha", "beta"], ["gamma"], ["e"]]):
        with pytest.raises(DocumentConflict, match="different text; resend the same content"):
            KNOWLEDGE.decide(state, IngestDocument(parts=document(other)))
    # Another id is another document.
    assert len(KNOWLEDGE.decide(state, IngestDocument(parts=document(texts, "d2")))) == 2
    # A document from a snapshot taken before digests were kept cannot be compared: refused, not guessed.
    old = ContextState(owner_id="kb", live={"d1": msgspec.structs.replace(state.live["d1"], document_digest=None)})
    with pytest.raises(DocumentConflict, match="cannot be compared"):
        KNOWLEDGE.decide(old, IngestDocument(parts=stored))
    # Forgotten, it is stored again.
    gone = fold_knowledge(state, KNOWLEDGE.decide(state, Forget(ids=("d1",))))
    assert len(KNOWLEDGE.decide(gone, IngestDocument(parts=retry))) == 2


def test_a_knowledge_state_from_before_document_digests_still_decodes() -> None:
    """A snapshot's entry written without ``document_digest`` (an older state) decodes with ``None``."""
    old = msgspec.msgpack.encode({"owner_id": "kb", "live": {"d1": {"kind": "knowledge", "created_at": 5.0}}})
    state = msgspec.msgpack.decode(old, type=ContextState)
    assert state.live["d1"].document_digest is None
    with pytest.raises(DocumentConflict, match="cannot be compared"):
        KNOWLEDGE.decide(state, IngestDocument(parts=document([["x"]])))


def test_events_round_trip_through_the_codec() -> None:
    event = memory(7, "working", "t-1")
    data = MEMORY.codec.encode(event)
    assert MEMORY.codec.decode(data, event_type="memory.stored") == event


_texts = st.text(min_size=1, max_size=40).filter(str.strip)
_tags = st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple)
_meta = st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6) | st.booleans(), max_size=3)


@settings(max_examples=60, deadline=None)
@given(text=_texts, tags=_tags, metadata=_meta, other=_texts, field=st.sampled_from(["text", "tags", "metadata"]))
def test_a_stored_memory_is_stored_once_and_a_changed_field_is_named(
    text: str, tags: tuple[str, ...], metadata: dict[str, Any], other: str, field: str
) -> None:
    stored = msgspec.structs.replace(memory(1, "long_term"), text=text, tags=tags, metadata=metadata)
    state = fold(MEMORY.initial("ada"), [stored])
    again = msgspec.structs.replace(stored, created_at=stored.created_at + 5, vector=b"\1" * 16)
    assert MEMORY.decide(state, StoreMemories(memories=(again,), short_term_capacity=1)) == []
    changed_value = {"text": other, "tags": (*tags, other[:8]), "metadata": {**metadata, "__x": other}}[field]
    if changed_value == getattr(stored, field):
        return
    with pytest.raises(MemoryConflict) as caught:
        MEMORY.decide(
            state,
            StoreMemories(memories=(msgspec.structs.replace(stored, **{field: changed_value}),), short_term_capacity=1),
        )
    assert caught.value.differs == [field]
