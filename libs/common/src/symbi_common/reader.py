"""Reading one stored event: the one place an envelope's payload becomes a domain event.

Every consumer of the stream (the repository, projections, followers, the audit verifier, the vector index)
decodes through :func:`decode_opened`: it fetches the aggregate's data key, decrypts the payload and decodes it
with the ``schema_version`` the envelope header records, so an event written by an older version of its
service is upcast (:class:`symbi_common.events.EventCodec`) before any handler sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic

from symbi_common.datakeys import DataKeys
from symbi_common.envelope import EventHeader
from symbi_common.events import E, EventCodec
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import ChainTip, OpenedEvent, decrypt, open_envelope


@dataclass(frozen=True, slots=True)
class Recorded(Generic[E]):
    """An event as appended or loaded: its verified header, its place in the stream and its payload."""

    event: E
    header: EventHeader
    sequence: int
    hash: bytes
    #: The W3C trace context (``traceparent``, ``tracestate``) the stored message carried, when loaded from the
    #: stream; outside the signed bytes, so it only says which trace to continue, never anything trusted.
    trace: Mapping[str, str] | None = None

    @property
    def tip(self) -> ChainTip:
        return ChainTip(self.sequence, self.header.aggregate_version, self.hash)


async def decode_opened(opened: OpenedEvent, datakeys: DataKeys, codec: EventCodec[E]) -> Recorded[E]:
    """Decrypt and decode a verified envelope, upcasting a payload older than the codec's classes.

    Raises :class:`~symbi_common.errors.DataKeyDestroyed` for a crypto-shredded aggregate,
    :class:`~symbi_common.errors.UnknownEventType` / :class:`~symbi_common.errors.MalformedEvent` for a
    payload the codec cannot read.
    """
    key = await datakeys.by_id(opened.header.data_key_id)
    event = codec.decode(
        decrypt(opened, key),
        event_type=opened.header.event_type,
        schema_version=opened.header.schema_version,
        sequence=opened.sequence,
        subject=opened.subject,
    )
    return Recorded(event, opened.header, opened.sequence, opened.hash)


async def read_event(
    data: bytes, *, subject: str, sequence: int, registry: KeyRegistry, datakeys: DataKeys, codec: EventCodec[E]
) -> Recorded[E]:
    """Verify (signature, signer authorised for ``subject``; no chain check), decrypt and decode one stored message."""
    opened = open_envelope(data, subject=subject, sequence=sequence, registry=registry)
    return await decode_opened(opened, datakeys, codec)
