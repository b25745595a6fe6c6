"""The pure building blocks of a service's domain: an aggregate type as pure functions over events.

An aggregate type supplies ``initial``, ``apply`` (state + event -> state) and ``decide``
(state + command -> events, or a typed domain error). A service's ``domain`` module defines them and
imports only this module (no I/O); :class:`symbi_common.aggregate.Repository` runs them against the
event store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from symbi_common.events import Event, EventCodec

S = TypeVar("S")
C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
E = TypeVar("E", bound=Event)


class Aggregate(Protocol[S, C_contra, E]):
    """The pure part of an aggregate type."""

    @property
    def aggregate_type(self) -> str: ...
    @property
    def codec(self) -> EventCodec[E]: ...
    @property
    def state_type(self) -> type[S]: ...

    def initial(self, aggregate_id: str) -> S: ...
    def apply(self, state: S, event: E) -> S: ...
    def decide(self, state: S, command: C_contra) -> list[E]: ...


@dataclass(frozen=True, slots=True)
class AggregateType(Generic[S, C, E]):
    """An :class:`Aggregate` made of its pure functions, for the usual case of a module that defines them."""

    aggregate_type: str
    codec: EventCodec[E]
    state_type: type[S]
    initial: Callable[[str], S]
    apply: Callable[[S, E], S]
    decide: Callable[[S, C], list[E]]
