"""The event envelope: what is stored in JetStream for every event.

A stored event is the msgpack array ``[header, ciphertext, signature]`` where ``header`` is itself
the msgpack encoding of :class:`EventHeader`. Those exact ``header`` bytes are the AES-GCM
associated data and, with the ciphertext, what the Ed25519 signature covers, so verifiers never
re-encode anything before checking it. ``prev_hash`` of an event is the SHA-256 of the previous
event's complete stored bytes (the chain link), zeros for an aggregate's first event.
"""

from __future__ import annotations

import hashlib
import struct

import msgspec

from symbi_common.errors import MalformedEvent

ENVELOPE_VERSION = 1
ZERO_HASH = bytes(32)
SIGNATURE_DOMAIN = b"symbi.event.v1\x00"


class EventHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Clear, signed metadata of one event. Field names are part of the stored format: never rename."""

    version: int
    event_id: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    event_type: str
    schema_version: int
    occurred_at: int
    """Unix time in nanoseconds, set by the producer."""
    producer: str
    signing_key_id: str
    prev_hash: bytes
    causation_id: str | None
    correlation_id: str | None
    data_key_id: str
    nonce: bytes

    @property
    def subject(self) -> str:
        return subject_for(self.aggregate_type, self.aggregate_id)


class SealedEvent(msgspec.Struct, frozen=True, array_like=True):
    """The stored form: encoded header, AES-GCM ciphertext of the payload, Ed25519 signature."""

    header: bytes
    ciphertext: bytes
    signature: bytes


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(EventHeader)
_sealed_encoder = msgspec.msgpack.Encoder()
_sealed_decoder = msgspec.msgpack.Decoder(SealedEvent)


def subject_for(aggregate_type: str, aggregate_id: str) -> str:
    """The JetStream subject of one aggregate instance: ``evt.<type>.<id>``."""
    return f"evt.{aggregate_type}.{aggregate_id}"


def encode_header(header: EventHeader) -> bytes:
    return _header_encoder.encode(header)


def decode_header(data: bytes, *, sequence: int | None = None, subject: str | None = None) -> EventHeader:
    try:
        header = _header_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"event header is malformed: {exc}", sequence=sequence, subject=subject) from exc
    if header.version != ENVELOPE_VERSION:
        raise MalformedEvent(f"unsupported envelope version {header.version}", sequence=sequence, subject=subject)
    if len(header.prev_hash) != 32 or len(header.nonce) != 12:
        raise MalformedEvent("prev_hash must be 32 bytes and nonce 12", sequence=sequence, subject=subject)
    return header


def encode_sealed(sealed: SealedEvent) -> bytes:
    return _sealed_encoder.encode(sealed)


def decode_sealed(data: bytes, *, sequence: int | None = None, subject: str | None = None) -> SealedEvent:
    try:
        sealed = _sealed_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"stored bytes are not a sealed event: {exc}", sequence=sequence, subject=subject) from exc
    if len(sealed.signature) != 64:
        raise MalformedEvent("signature must be 64 bytes", sequence=sequence, subject=subject)
    return sealed


def signed_message(header: bytes, ciphertext: bytes) -> bytes:
    """The bytes an event signature covers: a domain tag, the header length, header, ciphertext."""
    return b"".join((SIGNATURE_DOMAIN, struct.pack(">I", len(header)), header, ciphertext))


def event_hash(stored: bytes) -> bytes:
    """The chain hash of one stored event: SHA-256 of its exact stored bytes."""
    return hashlib.sha256(stored).digest()
