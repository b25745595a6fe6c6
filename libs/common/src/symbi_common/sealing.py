"""Sealing and opening events: pure functions over bytes and keys, no I/O.

Sealing: encode the payload, encrypt it with the aggregate's data key (the encoded header as
associated data), sign header + ciphertext. Opening: decode, check the subject, check the signing
key is known and authorised, verify the signature, check the chain link, then (optionally) decrypt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import uuid_utils

from symbi_common.crypto import AeadKey, Signer, new_nonce
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
from symbi_common.errors import (
    BadSignature,
    BrokenChain,
    DecryptionFailed,
    SubjectMismatch,
    UnauthorisedSigner,
    VersionGap,
)
from symbi_common.keyring import KeyRegistry


@dataclass(frozen=True, slots=True)
class ChainTip:
    """Where an aggregate's chain ends: stream sequence, aggregate version and hash of its last event."""

    sequence: int = 0
    version: int = 0
    hash: bytes = ZERO_HASH


NEW_AGGREGATE = ChainTip()


@dataclass(frozen=True, slots=True)
class OpenedEvent:
    """A stored event whose envelope verified. ``payload`` is the decrypted plaintext, if decrypted."""

    sequence: int
    subject: str
    data: bytes
    header: EventHeader
    sealed: SealedEvent
    hash: bytes
    payload: bytes | None = None

    @property
    def tip(self) -> ChainTip:
        return ChainTip(self.sequence, self.header.aggregate_version, self.hash)


def new_event_id() -> str:
    """A UUIDv7: time-ordered, unique."""
    return str(uuid_utils.uuid7())


def seal(
    *,
    signer: Signer,
    producer: str,
    data_key: AeadKey,
    aggregate_type: str,
    aggregate_id: str,
    aggregate_version: int,
    event_type: str,
    schema_version: int,
    payload: bytes,
    prev_hash: bytes,
    event_id: str | None = None,
    causation_id: str | None = None,
    correlation_id: str | None = None,
    occurred_at: int | None = None,
) -> tuple[bytes, EventHeader]:
    """Seal one event; returns the exact bytes to store and the header."""
    header = EventHeader(
        version=ENVELOPE_VERSION,
        event_id=event_id or new_event_id(),
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        event_type=event_type,
        schema_version=schema_version,
        occurred_at=occurred_at if occurred_at is not None else time.time_ns(),
        producer=producer,
        signing_key_id=signer.key_id,
        prev_hash=prev_hash,
        causation_id=causation_id,
        correlation_id=correlation_id,
        data_key_id=data_key.key_id,
        nonce=new_nonce(),
    )
    header_bytes = encode_header(header)
    _, ciphertext = data_key.encrypt(payload, header_bytes, header.nonce)
    signature = signer.sign(signed_message(header_bytes, ciphertext))
    return encode_sealed(SealedEvent(header_bytes, ciphertext, signature)), header


def open_envelope(data: bytes, *, subject: str, sequence: int, registry: KeyRegistry) -> OpenedEvent:
    """Decode and authenticate one stored event (signature and signer authorisation; no chain check)."""
    sealed = decode_sealed(data, sequence=sequence, subject=subject)
    header = decode_header(sealed.header, sequence=sequence, subject=subject)
    if subject_for(header.aggregate_type, header.aggregate_id) != subject:
        raise SubjectMismatch(
            f"header names {header.subject} but the event is stored under {subject}",
            sequence=sequence,
            subject=subject,
        )
    verifier = registry.authorise(header.signing_key_id, subject, sequence=sequence)
    signer_service = registry.service_of(header.signing_key_id)
    if header.producer != signer_service:
        raise UnauthorisedSigner(
            f"event {header.event_id} names producer {header.producer!r} but is signed by a key of {signer_service}",
            sequence=sequence,
            subject=subject,
        )
    if not verifier.verify(signed_message(sealed.header, sealed.ciphertext), sealed.signature):
        raise BadSignature(
            f"signature of event {header.event_id} does not verify with key {header.signing_key_id}",
            sequence=sequence,
            subject=subject,
        )
    return OpenedEvent(sequence, subject, data, header, sealed, event_hash(data))


def check_link(prev: ChainTip, event: OpenedEvent) -> None:
    """The event must follow ``prev``: hash link and aggregate version + 1."""
    header = event.header
    if header.aggregate_version != prev.version + 1:
        raise VersionGap(
            f"aggregate version {header.aggregate_version} does not follow {prev.version}",
            sequence=event.sequence,
            subject=event.subject,
        )
    if header.prev_hash != prev.hash:
        raise BrokenChain(
            f"prev_hash of event {header.event_id} does not match the previous event "
            f"(expected {prev.hash.hex()[:16]}…, found {header.prev_hash.hex()[:16]}…)",
            sequence=event.sequence,
            subject=event.subject,
        )


def decrypt(event: OpenedEvent, key: AeadKey) -> bytes:
    plaintext = key.decrypt(event.header.nonce, event.sealed.ciphertext, event.sealed.header)
    if plaintext is None:
        raise DecryptionFailed(
            f"payload of event {event.header.event_id} does not decrypt with data key {key.key_id}",
            sequence=event.sequence,
            subject=event.subject,
        )
    return plaintext
