"""The communication bus between agents: subjects, the message envelope and the protocol's ``messages.*`` args.

A message travels on JetStream stream ``MESSAGES`` as one JSON envelope: its metadata in clear (who sent it,
to whom or on which topic, its id, kind, TTL, reply subject, classification), its payload AES-256-GCM
encrypted under a data key (``message.<sender>.<recipient or topic>``) with the metadata as associated
data, and an Ed25519 signature of the sending agent's identity key (held by the sender's host, never in a
container) over the metadata and the ciphertext. Messages that cannot be delivered go to stream
``DEADLETTER`` with their reason. Pure: no I/O here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec
from symbi_common.bus_names import AGENT_KEYS_BUCKET as AGENT_KEYS_BUCKET
from symbi_common.bus_names import DEADLETTER_STREAM as DEADLETTER_STREAM
from symbi_common.bus_names import DELIVERED_BUCKET as DELIVERED_BUCKET
from symbi_common.bus_names import INBOX_DEPTH as INBOX_DEPTH
from symbi_common.bus_names import MESSAGES_STREAM as MESSAGES_STREAM
from symbi_common.ids import ID_RE, MAX_ID

Kind = Literal["direct", "topic", "request", "reply"]
#: Why a message went to the dead letters.
DeadReason = Literal[
    "expired",
    "max_deliveries",
    "recipient_terminated",
    "unknown_sender_key",
    "bad_signature",
    "refused",
    "undecryptable",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
#: The lifecycle's agent id rule (``symbi_lifecycle.domain.AGENT_ID_RE``): every agent it creates can be addressed.
MAX_AGENT_ID = MAX_ID
_AGENT_ID_RE = ID_RE
#: Header an operator's replay (`symbi bus dlq replay`) adds to a dead letter it puts back: seconds since the
#: epoch, as ``repr(time.time())`` writes them. The recipient's host counts the TTL from it and decides again.
REPLAYED_AT = "Symbi-Replayed-At"
#: Containers (lists, objects) a message body may nest at most: checked when it is sent and when it is opened,
#: far below where encoding or decoding it would run out of stack.
MAX_BODY_DEPTH = 64


def valid_name(name: str) -> bool:
    """A topic or a message id usable as one subject token and KV key: 1-64 letters, digits, ``-``, ``_``."""
    return _NAME_RE.fullmatch(name) is not None


def valid_agent_id(agent_id: str) -> bool:
    """An agent id, as the lifecycle allows them: 1-128 letters, digits, ``-``, ``_`` (one subject token, KV
    key, and with ``inbox-`` a consumer name well within JetStream's 255 characters)."""
    return _AGENT_ID_RE.fullmatch(agent_id) is not None


def direct_subject(agent_id: str) -> str:
    return f"msg.direct.{agent_id}"


def topic_subject(topic: str) -> str:
    return f"msg.topic.{topic}"


def reply_subject(agent_id: str, message_id: str) -> str:
    return f"msg.reply.{agent_id}.{message_id}"


def dead_subject(agent_id: str) -> str:
    return f"dlq.{agent_id}"


class Meta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A message's metadata, in clear: readable with the NATS CLI, signed, and bound to the payload (AAD)."""

    id: str
    kind: Kind
    sender: str
    sent_at: float
    to: str = ""
    topic: str = ""
    ttl_s: float = 0.0
    reply_to: str = ""
    in_reply_to: str = ""
    classification: str = ""
    size: int = 0


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One message as stored in ``MESSAGES``: metadata, the encrypted payload and the sender's signature."""

    meta: Meta
    key_id: str
    nonce: bytes
    ciphertext: bytes
    signature: bytes


class AgentKey(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's identity public key, as its host registered it: ``host_signature`` is the host service key's
    signature (``host_key_id``) over :func:`agent_key_statement`."""

    agent_id: str
    public_key: bytes
    host_key_id: str
    host_signature: bytes


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message that could not be delivered, with why; ``envelope`` is the message as it was sent."""

    reason: str
    detail: str
    recipient: str
    dead_at: float
    envelope: Envelope


def agent_key_statement(agent_id: str, public_key: bytes) -> bytes:
    return b"symbi-agent-key-v1\0" + agent_id.encode() + b"\0" + public_key


_meta_encoder = msgspec.json.Encoder()
_envelope_encoder = msgspec.json.Encoder()
ENVELOPE_DECODER: msgspec.json.Decoder[Envelope] = msgspec.json.Decoder(Envelope)
DEAD_DECODER: msgspec.json.Decoder[DeadLetter] = msgspec.json.Decoder(DeadLetter)
AGENT_KEY_DECODER: msgspec.json.Decoder[AgentKey] = msgspec.json.Decoder(AgentKey)


def meta_bytes(meta: Meta) -> bytes:
    """The metadata as signed and as the payload's associated data."""
    return _meta_encoder.encode(meta)


def signed_bytes(meta: Meta, key_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    """What the sender's identity key signs."""
    return b"symbi-msg-v1\0" + meta_bytes(meta) + b"\0" + key_id.encode() + b"\0" + nonce + ciphertext


def encode(value: Envelope | DeadLetter | AgentKey) -> bytes:
    return _envelope_encoder.encode(value)


# --- the protocol's args (ops messages.*) ------------------------------------------------------------


class Send(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``messages.send``: a direct message to agent ``to`` (a reply when ``in_reply_to`` names a request)."""

    to: str
    body: Any
    ttl_s: float = 0.0
    in_reply_to: str = ""


class Publish(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``messages.publish``: a message on ``topic`` for every agent subscribed to it."""

    topic: str
    body: Any
    ttl_s: float = 0.0


class Ask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``messages.request``: a request to agent ``to``; the answer is its reply, or ``timeout`` after ``timeout_s``."""

    to: str
    body: Any
    timeout_s: float = 10.0


class Receive(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``messages.receive``: wait up to ``timeout_s`` for up to ``max`` messages; ``subscribe`` adds topics
    to the agent's inbox first (``messages.subscribe`` is the same with ``timeout_s=0``)."""

    max: int = 10
    timeout_s: float = 5.0
    subscribe: tuple[str, ...] = ()


MAX_RECEIVE = 256
MAX_WAIT_S = 60.0
