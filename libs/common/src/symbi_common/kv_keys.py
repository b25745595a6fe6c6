"""The keys of a JetStream KV bucket, listed from the stream's subjects.

nats-py's ``KeyValue.keys()`` can raise ``NoKeysError`` for a bucket that holds keys: it asks for the
consumer's pending count while the first deliveries are still held back, sees 0 pending and 0 received,
and reports the end of the listing before any key. The stream's own count per subject has no such race.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue


async def kv_keys(js: JetStreamContext, kv: KeyValue, bucket: str) -> list[str]:
    """The keys of ``bucket`` (opened as ``kv``) whose latest entry is a value, not a delete or purge."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    keys = []
    for subject in sorted(info.state.subjects or {}):
        key = subject.removeprefix(prefix)
        try:
            await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # deleted or purged (KeyDeletedError is a subclass)
            continue
        keys.append(key)
    return keys
