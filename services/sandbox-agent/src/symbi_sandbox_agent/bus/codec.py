"""Sealing and opening one message envelope (pure: keys in, bytes out).

The payload is the message body as JSON, AES-256-GCM encrypted with the metadata as associated data; the
sender's identity key signs metadata, key id, nonce and ciphertext. Opening checks the signature first,
then decrypts: a message whose metadata or payload was changed on the way does not open.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from symbi_common.bounds import nested_deeper_than
from symbi_common.crypto import AeadKey, Signer, Verifier
from symbi_contracts.bus import MAX_BODY_DEPTH, Envelope, Meta, meta_bytes, signed_bytes

from symbi_sandbox_agent.bus.errors import BadMessage

_body_encoder = msgspec.json.Encoder()
#: What decoding JSON from the wire raises (msgspec raises ``UnicodeDecodeError`` for bad UTF-8 inside a string).
UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError)


class Refused(Exception):
    """A message that may not be handed to its recipient; ``reason`` is its dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_duration(ttl_s: float) -> bool:
    """Whether ``ttl_s`` is a message's time to live: 0 (never expires) or a finite positive number of seconds."""
    return math.isfinite(ttl_s) and ttl_s >= 0


def check_ttl(ttl_s: float) -> None:
    """:class:`BadMessage` unless ``ttl_s`` is a duration (:func:`is_duration`)."""
    if not is_duration(ttl_s):
        raise BadMessage(f"ttl_s {ttl_s!r:.40} is not a duration: 0 (never expires) or a positive number of seconds")


def check_sendable(body: Any, ttl_s: float) -> None:
    """:class:`BadMessage` unless ``body`` nests at most :data:`MAX_BODY_DEPTH` containers (what every
    receiver decodes) and ``ttl_s`` is a duration (:func:`is_duration`)."""
    check_ttl(ttl_s)
    if nested_deeper_than(body, MAX_BODY_DEPTH):
        raise BadMessage(
            f"the message body nests lists or objects more than {MAX_BODY_DEPTH} levels deep",
            max_body_depth=MAX_BODY_DEPTH,
        )


def body_bytes(body: Any) -> bytes:
    return _body_encoder.encode(body)


class Encoded(msgspec.Struct, frozen=True):
    """A body already checked (:func:`check_sendable`) and encoded by the caller: sent as it is, not again."""

    payload: bytes


def sendable(body: Any, ttl_s: float) -> Encoded:
    """``body`` checked (:class:`BadMessage`) and encoded once, for the size its decision needs and the send."""
    check_sendable(body, ttl_s)
    return Encoded(body_bytes(body))


def seal(meta: Meta, payload: bytes, key: AeadKey, signer: Signer) -> Envelope:
    nonce, ciphertext = key.encrypt(payload, meta_bytes(meta))
    signature = signer.sign(signed_bytes(meta, key.key_id, nonce, ciphertext))
    return Envelope(meta=meta, key_id=key.key_id, nonce=nonce, ciphertext=ciphertext, signature=signature)


def check_signature(envelope: Envelope, verifier: Verifier) -> None:
    signed = signed_bytes(envelope.meta, envelope.key_id, envelope.nonce, envelope.ciphertext)
    if not verifier.verify(signed, envelope.signature):
        raise Refused("bad_signature", f"message {envelope.meta.id} is not signed by {envelope.meta.sender}'s key")


def open_payload(envelope: Envelope, key: AeadKey) -> Any:
    plaintext = key.decrypt(envelope.nonce, envelope.ciphertext, meta_bytes(envelope.meta))
    if plaintext is None:
        raise Refused("undecryptable", f"message {envelope.meta.id} does not decrypt under {envelope.key_id}")
    try:
        body = msgspec.json.decode(plaintext)
    except (*UNDECODABLE, RecursionError) as exc:  # (how deep a body decodes depends on the caller's stack)
        raise Refused(
            "refused", f"the body of message {envelope.meta.id} is not JSON this host decodes: {exc}"
        ) from None
    # The sending side's limit, whatever the stack left here: a peer's deeper body is refused, never handed over
    # (the count of brackets only spares the walk for a body that cannot be that deep).
    if plaintext.count(b"[") + plaintext.count(b"{") > MAX_BODY_DEPTH and nested_deeper_than(body, MAX_BODY_DEPTH):
        raise Refused("refused", f"the body of message {envelope.meta.id} nests more than {MAX_BODY_DEPTH} levels deep")
    return body


def expired(meta: Meta, now: float, replayed_at: float = 0.0) -> bool:
    """Whether the message's TTL passed (counted from a replay, when the operator replayed it)."""
    return meta.ttl_s > 0 and max(meta.sent_at, replayed_at) + meta.ttl_s < now
