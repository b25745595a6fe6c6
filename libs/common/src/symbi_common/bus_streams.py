"""The streams and KV buckets of the communication bus between agents (provisioned with the others).

``MESSAGES`` (``msg.>``) holds messages until every consumer interested in them acknowledged them (interest
retention): an agent's inbox is its durable consumer, so a message to a stopped or suspended agent waits.
Each subject (one agent's inbox, one topic) holds at most ``INBOX_DEPTH`` messages; a send past it is refused
by the server (discard new per subject) and answered ``rate_limited``. ``DEADLETTER`` (``dlq.>``) keeps what
could not be delivered, with its reason, for ``symbi bus dlq``.
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from symbi_common.bus_names import (
    AGENT_KEYS_BUCKET,
    DEAD_MAX_AGE_S,
    DEADLETTER_STREAM,
    DELIVERED_BUCKET,
    DELIVERED_TTL_S,
    INBOX_DEPTH,
    MESSAGE_MAX_AGE_S,
    MESSAGES_STREAM,
)


def messages_config(replicas: int, duplicate_window_s: float, max_msg_size: int) -> StreamConfig:
    return StreamConfig(
        name=MESSAGES_STREAM,
        subjects=["msg.>"],
        retention=RetentionPolicy.INTEREST,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=INBOX_DEPTH,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_age=MESSAGE_MAX_AGE_S,
        max_msg_size=max_msg_size,
        duplicate_window=duplicate_window_s,
        allow_direct=True,
    )


def deadletter_config(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=DEADLETTER_STREAM,
        subjects=["dlq.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=DEAD_MAX_AGE_S,
        allow_direct=True,
    )


def bus_buckets(replicas: int) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(bucket=AGENT_KEYS_BUCKET, history=1, replicas=replicas),
        KeyValueConfig(bucket=DELIVERED_BUCKET, history=1, ttl=DELIVERED_TTL_S, replicas=replicas),
    ]


#: Deliveries of one message to an inbox before it goes to the dead letters (``max_deliveries``).
MAX_DELIVER = 5
ACK_WAIT_S = 30.0


def inbox_name(agent_id: str) -> str:
    """The durable consumer that is ``agent_id``'s inbox."""
    return f"inbox-{agent_id}"


#: Inbox consumer metadata, written by the host serving the agent from its definition: the inbox depth
#: (sending hosts refuse past it) and the agent's clearances (what policies see on it as a recipient).
QUEUE_DEPTH_KEY = "symbi_queue_depth"
CLEARANCES_KEY = "symbi_clearances"


def inbox_metadata(queue_depth: int, clearances: Sequence[str]) -> dict[str, str]:
    """What the host serving an agent declares on its inbox (clearances comma-separated, sorted)."""
    return {QUEUE_DEPTH_KEY: str(queue_depth), CLEARANCES_KEY: ",".join(sorted(set(clearances)))}


def declared_clearances(metadata: dict[str, str] | None) -> tuple[str, ...]:
    """The clearances an inbox's metadata declares (none when undeclared)."""
    return tuple(c for c in (metadata or {}).get(CLEARANCES_KEY, "").split(",") if c)


def inbox_config(
    agent_id: str, filter_subjects: list[str], metadata: dict[str, str] | None = None, ack_wait: float = ACK_WAIT_S
) -> ConsumerConfig:
    """``agent_id``'s inbox: its direct subject and its topics, in stream order, each message acked;
    ``metadata``: what its host declared from its definition (:func:`inbox_metadata`); ``ack_wait``: how long
    a message handed over waits for its ack before it is delivered again (``[sandbox] bus_ack_wait_s``)."""
    return ConsumerConfig(
        metadata=metadata or None,
        durable_name=inbox_name(agent_id),
        filter_subjects=filter_subjects,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=MAX_DELIVER,
        ack_wait=ack_wait,
        max_ack_pending=INBOX_DEPTH,
    )
