"""Names and bounds of the bus between agents' streams and buckets (pure: no I/O; see :mod:`symbi_common.bus_streams`)."""

from __future__ import annotations

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
