"""The streams and KV buckets of the communication bus between agents (provisioned with the others).

``MESSAGES`` (``msg.>``) holds messages until every consumer interested in them acknowledged them (interest
retention): an agent's inbox is its durable consumer, so a message to a stopped or suspended agent waits.
Each subject (one agent's inbox, one topic) holds at most ``INBOX_DEPTH`` messages; a send past it is refused
by the server (discard new per subject) and answered ``rate_limited``. ``DEADLETTER`` (``dlq.>``) keeps what
could not be delivered, with its reason, for ``symbi bus dlq``.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

MESSAGES_STREAM = "MESSAGES"
DEADLETTER_STREAM = "DEADLETTER"
#: KV bucket of the agents' identity public keys, each signed by the host that holds the private key.
AGENT_KEYS_BUCKET = "AGENT_KEYS"
#: KV bucket of the ids of messages handed to an agent (``<agent_id>.<message id>``).
DELIVERED_BUCKET = "BUS_DELIVERED"
#: Messages waiting in one inbox (or one topic) at most.
INBOX_DEPTH = 1000
#: How long a delivered id is remembered (longer than the stream's duplicate window).
DELIVERED_TTL_S = 24 * 3600.0
#: How long an undelivered message is kept at most.
MESSAGE_MAX_AGE_S = 7 * 24 * 3600.0
DEAD_MAX_AGE_S = 30 * 24 * 3600.0


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
