"""Domain events: frozen msgspec Structs in tagged unions, and the codec that (de)serialises them.

Each aggregate type declares its events as subclasses of :class:`Event` with an explicit, stable tag
(``class AgentRegistered(Event, tag="agent.registered")``). The tag is the event type in the
envelope header. Evolve an event only by adding fields with defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar, Union

import msgspec

from symbi_common.errors import MalformedEvent, UnknownEventType


class Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    """Base of every domain event. Subclasses set ``tag=`` to their stable event type."""

    schema_version: ClassVar[int] = 1


E = TypeVar("E", bound=Event)


def event_type(event: Event) -> str:
    """The stable tag of an event instance."""
    tag = type(event).__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{type(event).__name__} has no string tag; declare it with tag='...'")
    return tag


class EventCodec(Generic[E]):
    """Encodes events to msgpack and decodes them back into the right class by tag."""

    def __init__(self, types: Sequence[type[E]]) -> None:
        if not types:
            raise ValueError("an EventCodec needs at least one event type")
        self.types = tuple(types)
        self.tags = {t.__struct_config__.tag for t in types}
        union: Any = Union[tuple(types)] if len(types) > 1 else types[0]  # noqa: UP007
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[E] = msgspec.msgpack.Decoder(union)

    def encode(self, event: E) -> bytes:
        return self._encoder.encode(event)

    def decode(self, data: bytes, *, event_type: str, sequence: int | None = None, subject: str | None = None) -> E:
        if event_type not in self.tags:
            raise UnknownEventType(f"event type {event_type!r} is not known here", sequence=sequence, subject=subject)
        try:
            event = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise MalformedEvent(f"payload does not decode: {exc}", sequence=sequence, subject=subject) from exc
        if type(event).__struct_config__.tag != event_type:
            raise MalformedEvent(
                f"payload is a {type(event).__struct_config__.tag} but the header says {event_type}",
                sequence=sequence,
                subject=subject,
            )
        return event
