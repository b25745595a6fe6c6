"""kv_keys: a bucket's live keys, from the stream's own count per subject (real nats-server)."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from symbi_common.kv_keys import kv_keys


async def test_lists_every_key_holding_a_value_and_none_deleted_or_purged(js: JetStreamContext) -> None:
    kv = await js.create_key_value(KeyValueConfig(bucket="KEYS", history=1))
    assert await kv_keys(js, kv, "KEYS") == []  # empty: a list, not an error
    for key in ("b", "a.x", "c", "d"):
        await kv.put(key, b"v")
    await kv.put("a.x", b"updated")
    await kv.delete("c")
    await kv.purge("d")
    assert await kv_keys(js, kv, "KEYS") == ["a.x", "b"]


async def test_keys_are_listed_while_they_are_being_written(js: JetStreamContext) -> None:
    kv = await js.create_key_value(KeyValueConfig(bucket="BUSY", history=1))
    for i in range(20):
        await kv.put(f"k{i}", b"v")
        assert len(await kv_keys(js, kv, "BUSY")) == i + 1  # each listing sees every key written before it
