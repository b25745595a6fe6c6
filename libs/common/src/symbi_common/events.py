"""Domain events: frozen msgspec Structs in tagged unions, and the codec that (de)serialises them.

Each aggregate type declares its events as subclasses of :class:`Event` with an explicit, stable tag
(``class AgentRegistered(Event, tag="agent.registered")``). The tag is the event type in the
envelope header.

Schema evolution: adding a field with a default needs nothing (old payloads decode, readers ignore fields
they do not know). Any other change (a rename, a new required field, a changed type or meaning) raises the
class's ``schema_version`` and registers an *upcaster* per older version with the codec:
``EventCodec(types, upcasters={("agent.ready", 1): v1_to_v2})``. The envelope header records the
``schema_version`` each event was written with; :meth:`EventCodec.decode` turns an older payload into the
current shape, one version at a time, before it is converted to the class (and so before ``apply``). A codec
refuses to be built with a gap in a type's upcasters, and an event newer than the reader knows is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar, Union

import msgspec

from symbi_common.errors import MalformedEvent, UnknownEventType


class Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    """Base of every domain event. Subclasses set ``tag=`` to their stable event type."""

    schema_version: ClassVar[int] = 1


E = TypeVar("E", bound=Event)

#: Turns the payload of one event type at version ``v`` (a dict, as decoded from msgpack) into version ``v + 1``.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def event_type(event: Event) -> str:
    """The stable tag of an event instance."""
    return tag_of(type(event))


class EventCodec(Generic[E]):
    """Encodes events to msgpack and decodes them back into the right class by tag, upcasting old versions.

    ``upcasters`` maps ``(event type, version)`` to the function that lifts a payload from that version to
    the next; every type whose ``schema_version`` is ``n`` needs one for each of ``1 … n-1``.
    """

    def __init__(
        self, types: Sequence[type[E]], *, upcasters: Mapping[tuple[str, int], Upcaster] | None = None
    ) -> None:
        if not types:
            raise ValueError("an EventCodec needs at least one event type")
        self.types = tuple(types)
        self.by_tag: dict[str, type[E]] = {tag_of(t): t for t in types}
        self.tags = set(self.by_tag)
        self.versions: dict[str, int] = {tag: t.schema_version for tag, t in self.by_tag.items()}
        self.upcasters: dict[tuple[str, int], Upcaster] = dict(upcasters or {})
        _check_upcasters(self.versions, self.upcasters)
        union: Any = Union[tuple(types)] if len(types) > 1 else types[0]  # noqa: UP007
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[E] = msgspec.msgpack.Decoder(union)
        self._raw = msgspec.msgpack.Decoder(dict[str, Any])

    def encode(self, event: E) -> bytes:
        return self._encoder.encode(event)

    def decode(
        self,
        data: bytes,
        *,
        event_type: str,
        schema_version: int | None = None,
        sequence: int | None = None,
        subject: str | None = None,
    ) -> E:
        """The event ``data`` holds; ``schema_version`` (from the envelope) older than the class's is upcast first.

        ``schema_version=None`` means the current version. Raises :class:`UnknownEventType` for a type this
        codec does not know or a version newer than its class, :class:`MalformedEvent` for a payload that
        does not decode (or does not fit after upcasting).
        """
        if event_type not in self.tags:
            raise UnknownEventType(f"event type {event_type!r} is not known here", sequence=sequence, subject=subject)
        current = self.versions[event_type]
        if schema_version is not None and schema_version != current:
            return self._upcast(data, event_type, schema_version, current, sequence=sequence, subject=subject)
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

    def _upcast(
        self, data: bytes, event_type: str, version: int, current: int, *, sequence: int | None, subject: str | None
    ) -> E:
        if version > current:
            raise UnknownEventType(
                f"{event_type} version {version} is newer than this service reads (version {current}); upgrade it",
                sequence=sequence,
                subject=subject,
            )
        if version < 1:
            raise MalformedEvent(f"{event_type} has schema version {version}", sequence=sequence, subject=subject)
        try:
            payload = self._raw.decode(data)
            if payload.get("type") != event_type:
                raise MalformedEvent(
                    f"payload is a {payload.get('type')!r} but the header says {event_type}",
                    sequence=sequence,
                    subject=subject,
                )
            for v in range(version, current):
                payload = self.upcasters[(event_type, v)](payload)
            payload["type"] = event_type
            return msgspec.convert(payload, self.by_tag[event_type])
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise MalformedEvent(
                f"{event_type} version {version} does not upcast to version {current}: {exc}",
                sequence=sequence,
                subject=subject,
            ) from exc


def tag_of(t: type[Event]) -> str:
    """The stable tag of an event class."""
    tag = t.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{t.__name__} has no string tag; declare it with tag='...'")
    return tag


def _check_upcasters(versions: Mapping[str, int], upcasters: Mapping[tuple[str, int], Upcaster]) -> None:
    """Every older version of every type has its upcaster, and no upcaster is for something else."""
    for tag, current in versions.items():
        if current < 1:
            raise ValueError(f"{tag}: schema_version must be at least 1, not {current}")
        missing = [v for v in range(1, current) if (tag, v) not in upcasters]
        if missing:
            raise ValueError(f"{tag} is at version {current} but has no upcaster from version(s) {missing}")
    for tag, v in upcasters:
        if tag not in versions or not 1 <= v < versions[tag]:
            raise ValueError(f"upcaster for {tag} version {v} lifts no version of a type this codec decodes")
