"""OrderedPull against a real JetStream server: in order, none twice, none skipped — across restarts."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from symbi_common.ordered_pull import OrderedPull, kv_change
from symbi_common.streams import EVENTS_STREAM


async def _take(feed: OrderedPull, count: int) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(50):
        got += [bytes(m.data) for m in await feed.take(timeout=0.2)]
        if len(got) >= count:
            break
    return got


async def test_new_messages_in_order_and_a_deleted_consumer_loses_nothing(
    provisioned: NatsClient, js: JetStreamContext
) -> None:
    await js.publish("evt.op.old", b"before")
    feed = await OrderedPull(js, stream=EVENTS_STREAM, subject="evt.op.>", deliver_policy=DeliverPolicy.NEW).open()
    try:
        for i in range(3):
            await js.publish(f"evt.op.{i}", f"m{i}".encode())
        assert await _take(feed, 3) == [b"m0", b"m1", b"m2"]  # not what was there before
        # The consumer vanishes (as with a server restart); messages stored meanwhile are not lost.
        await js.delete_consumer(EVENTS_STREAM, feed._consumer)
        for i in range(3, 6):
            await js.publish(f"evt.op.{i}", f"m{i}".encode())
        assert await _take(feed, 3) == [b"m3", b"m4", b"m5"]
        assert feed.starts == 2
        assert await feed.take(timeout=0.3) == []
    finally:
        await feed.close()
        await feed.close()


async def test_a_gap_restarts_after_the_last_message_handed_out(provisioned: NatsClient, js: JetStreamContext) -> None:
    feed = await OrderedPull(js, stream=EVENTS_STREAM, subject="evt.gap.>", deliver_policy=DeliverPolicy.NEW).open()
    try:
        await js.publish("evt.gap.a", b"a")
        assert await _take(feed, 1) == [b"a"]
        for name in ("b", "c"):
            await js.publish(f"evt.gap.{name}", name.encode())
        feed._delivered -= 1  # as if a delivery had been lost: the next consumer sequence is not the expected one
        assert await _take(feed, 2) == [b"b", b"c"]  # the consumer restarted after "a": nothing skipped, none twice
        assert feed.starts == 2
        assert feed.last_sequence == (await js.stream_info(EVENTS_STREAM)).state.last_seq
    finally:
        await feed.close()


async def test_last_per_subject_starts_with_the_newest_of_each_and_says_when_caught_up(
    provisioned: NatsClient, js: JetStreamContext
) -> None:
    kv = await js.create_key_value(bucket="OPTEST", history=5)
    for rev in range(2):
        for key in ("x", "y", "z"):
            await kv.put(key, f"{key}{rev}".encode())
    feed = OrderedPull(js, stream="KV_OPTEST", subject="$KV.OPTEST.>", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    await feed.open()
    try:
        assert not feed.caught_up
        assert sorted(await _take(feed, 3)) == [b"x1", b"y1", b"z1"]
        assert feed.caught_up
        await kv.put("y", b"y2")
        assert await _take(feed, 1) == [b"y2"]
    finally:
        await feed.close()
    empty = await js.create_key_value(bucket="OPEMPTY", history=1)
    assert empty is not None
    feed = OrderedPull(js, stream="KV_OPEMPTY", subject="$KV.OPEMPTY.>", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    await feed.open()
    try:
        assert feed.caught_up  # nothing there: caught up at once
    finally:
        await feed.close()


async def test_idle_it_keeps_one_pull_request_open(provisioned: NatsClient, js: JetStreamContext) -> None:
    feed = await OrderedPull(js, stream=EVENTS_STREAM, subject="evt.idle.>", deliver_policy=DeliverPolicy.NEW).open()
    try:
        for _ in range(5):
            assert await feed.take(timeout=0.2) == []
        assert feed._feed is not None
        assert feed._feed.requests == 1
        waiting = asyncio.create_task(feed.take(timeout=10.0))
        await asyncio.sleep(0.05)
        await js.publish("evt.idle.x", b"x")
        assert [bytes(m.data) for m in await asyncio.wait_for(waiting, 5.0)] == [b"x"]
    finally:
        await feed.close()


def test_a_kv_message_names_its_key_and_whether_it_removes_it() -> None:
    def msg(headers: dict[str, str] | None) -> SimpleNamespace:
        return SimpleNamespace(subject="$KV.DATAKEYS.task.t1", headers=headers)

    assert kv_change(msg(None), "$KV.DATAKEYS.") == ("task.t1", False)
    assert kv_change(msg({"KV-Operation": "DEL"}), "$KV.DATAKEYS.") == ("task.t1", True)
    assert kv_change(msg({"KV-Operation": "PURGE"}), "$KV.DATAKEYS.") == ("task.t1", True)
    assert kv_change(msg({"Nats-Marker-Reason": "MaxAge"}), "$KV.DATAKEYS.") == ("task.t1", True)
