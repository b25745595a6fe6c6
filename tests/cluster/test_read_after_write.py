"""The leader read behind read-after-write on the R3 ``EVENTS`` stream, with a service's NATS user.

A load that a replica answers short of a sequence the store knows is stored reads the rest from the stream
leader (``STREAM.MSG.GET``, :mod:`symbi_common.fenced_read`). Here it is read through a follower member by the
least-privilege ``lifecycle`` user: the leader's copy is the one a direct get returns (sequence, headers,
bytes), and what no replica has is a :class:`StaleRead`, not a short answer. The lagging replica itself is
reproduced in ``libs/common/tests/test_read_after_write.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_cluster import stream_leader
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys
from symbi_common.envelope import subject_for
from symbi_common.errors import StaleRead
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.fenced_read import _from_leader, read_subject_at_least
from symbi_common.keyring import KeyRegistry
from symbi_common.natsauth import ADMIN
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import EVENTS_STREAM

from .conftest import REPLICAS, Cluster


class Claimed(Event, tag="cluster.claimed"):
    by: int


CODEC: EventCodec[Event] = EventCodec([Claimed])
#: Headers a direct get adds to the stored ones.
DIRECT_GET_HEADERS = ("Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending")


def stored_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in (*DIRECT_GET_HEADERS, "Nats-Last-Sequence")}


async def test_the_leader_read_through_a_follower(
    nats_cluster: Cluster,
    registry: KeyRegistry,
    signer_for: Callable[[str], Signer],
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> None:
    servers = nats_cluster.servers
    admin = await nats_cluster.connect(ADMIN, allow_reconnect=False)
    leader = servers.index_of(await stream_leader(admin.jetstream(timeout=5), EVENTS_STREAM, replicas=REPLICAS))
    await admin.close()
    nc = await nats_cluster.connect("lifecycle", [(leader + 1) % servers.size])
    try:
        store = EventStore(
            nc,
            signer=signer_for("lifecycle"),
            producer="lifecycle",
            registry=registry,
            datakeys=await datakeys_for(nc, "lifecycle"),
        )
        aggregate = uuid.uuid4().hex[:12]
        subject = subject_for("agent", aggregate)
        written = await store.append(
            "agent", aggregate, [Claimed(by=i) for i in range(3)], CODEC, expected=NEW_AGGREGATE
        )
        last = written[-1].sequence
        direct = [m async for batch in read_subject_at_least(nc, EVENTS_STREAM, subject, at_least=last) for m in batch]
        assert [m.sequence for m in direct] == [r.sequence for r in written]

        from_leader = await _from_leader(nc, EVENTS_STREAM, subject, after=0, limit=10, timeout=5)
        assert [(m.subject, m.sequence, m.data) for m in from_leader] == [
            (m.subject, m.sequence, m.data) for m in direct
        ]
        for ours, theirs in zip(from_leader, direct, strict=True):  # the stored headers, the same on both
            assert stored_headers(ours.headers) == stored_headers(theirs.headers)
        assert [m.headers["Nats-Msg-Id"] for m in from_leader] == [r.header.event_id for r in written]
        assert await _from_leader(nc, EVENTS_STREAM, subject, after=last, limit=10, timeout=5) == []

        started = time.monotonic()
        with pytest.raises(StaleRead):
            async for _ in read_subject_at_least(nc, EVENTS_STREAM, subject, at_least=last + 1, timeout=0.5):
                pass
        assert time.monotonic() - started < 3.0
    finally:
        await nc.close()
