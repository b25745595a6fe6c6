"""LivePull against a real JetStream server: one open pull request serves many live messages."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from symbi_common.errors import InfrastructureError
from symbi_common.live_pull import LivePull
from symbi_common.streams import EVENTS_STREAM


async def _consumer(js: JetStreamContext, name: str) -> None:
    await js.add_consumer(
        EVENTS_STREAM,
        ConsumerConfig(durable_name=name, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
    )


async def test_one_request_serves_the_backlog_and_each_live_message_as_it_arrives(
    provisioned: NatsClient, js: JetStreamContext
) -> None:
    for i in range(5):
        await js.publish(f"evt.test.{i}", f"old-{i}".encode())
    await _consumer(js, "lp")
    feed = await LivePull(js, EVENTS_STREAM, "lp", batch=100, expires=30.0).open()
    try:
        got: list[bytes] = []
        while len(got) < 5:
            got += [m.data for m in await feed.take(100, timeout=5.0)]
        assert got == [f"old-{i}".encode() for i in range(5)]
        for i in range(3):  # live: each one handed over as it is stored, by the same request
            waiting = asyncio.create_task(feed.take(100, timeout=10.0))
            await asyncio.sleep(0.05)
            await js.publish(f"evt.test.live{i}", f"live-{i}".encode())
            msgs = await asyncio.wait_for(waiting, timeout=5.0)
            assert [m.data for m in msgs] == [f"live-{i}".encode()]
            assert msgs[0].metadata.sequence.stream == 6 + i
        assert feed.requests == 1
        assert await feed.take(100, timeout=0.2) == []  # nothing more: the wait ends locally
        assert feed.requests == 1
    finally:
        await feed.close()
        await feed.close()  # idempotent


async def test_a_filled_or_expired_request_is_replaced(provisioned: NatsClient, js: JetStreamContext) -> None:
    await _consumer(js, "lp2")
    feed = await LivePull(js, EVENTS_STREAM, "lp2", batch=2, expires=0.5).open()
    try:
        for i in range(3):
            await js.publish(f"evt.test.{i}", b"x")
        got = []
        while len(got) < 3:
            got += await feed.take(10, timeout=5.0)
        assert feed.requests == 2  # the first delivered its batch of two
        assert await feed.take(10, timeout=3.0) == []  # its successor expired (408): the wait ends early
        await js.publish("evt.test.late", b"late")
        msgs: list[object] = []
        while not msgs:
            msgs = await feed.take(10, timeout=5.0)
        assert feed.requests == 3
    finally:
        await feed.close()


async def test_a_deleted_consumer_is_an_error(provisioned: NatsClient, js: JetStreamContext) -> None:
    await _consumer(js, "lp3")
    feed = await LivePull(js, EVENTS_STREAM, "lp3", batch=10, expires=30.0).open()
    try:
        waiting = asyncio.create_task(feed.take(10, timeout=10.0))
        await asyncio.sleep(0.2)
        await js.delete_consumer(EVENTS_STREAM, "lp3")
        with pytest.raises(InfrastructureError, match="lp3 refused by the server: 409"):
            await asyncio.wait_for(waiting, timeout=5.0)
    finally:
        await feed.close()


async def test_a_closed_feed_leaves_nothing_to_its_open_request(provisioned: NatsClient, js: JetStreamContext) -> None:
    """A process that stopped (or died) with a request open does not take what comes next: the server does not
    deliver to a request nobody listens to any more, so a durable consumer's next reader gets it at once."""
    await js.add_consumer(EVENTS_STREAM, ConsumerConfig(durable_name="lp4", ack_policy=AckPolicy.EXPLICIT))
    gone = await LivePull(js, EVENTS_STREAM, "lp4", batch=10, expires=30.0).open()
    assert await gone.take(10, timeout=0.2) == []  # its request is open on the server now
    await gone.close()
    await js.publish("evt.test.after", b"after")
    feed = await LivePull(js, EVENTS_STREAM, "lp4", batch=10, expires=30.0).open()
    try:
        msgs = await feed.take(10, timeout=5.0)
        assert [m.data for m in msgs] == [b"after"]
        assert msgs[0].metadata.num_delivered == 1
    finally:
        await feed.close()


async def test_closing_after_the_connection_is_gone_raises_nothing(nats_url: str, provisioned: NatsClient) -> None:
    """Shutdown order varies (the connection may be drained first): closing then is a no-op, not an error."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await _consumer(js, "lp-gone")
    feed = await LivePull(js, EVENTS_STREAM, "lp-gone", batch=10, expires=30.0).open()
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await nc.publish("evt.test.after", b"")  # the connection is really gone
    await feed.close()
    await feed.close()


async def test_a_cancelled_task_whose_cancellation_was_swallowed_stops_at_the_next_take(
    provisioned: NatsClient, js: JetStreamContext
) -> None:
    """Python 3.11's wait_for can drop a cancellation that arrives as its inner call completes; the consumer's
    loop must still stop at its next take instead of waiting out a request."""
    await _consumer(js, "swallowed")
    feed = await LivePull(js, EVENTS_STREAM, "swallowed", batch=10, expires=30.0).open()
    reached = []

    async def loop() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as wait_for may
            await asyncio.sleep(0)
        reached.append("take")
        await feed.take(10, timeout=20.0)
        reached.append("after take")

    try:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.create_task(loop()), timeout=5.0)
        assert reached == ["take"]
    finally:
        await feed.close()
