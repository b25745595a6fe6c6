"""Racing appends on a replicated EVENTS stream: one wins, every other one is a ConcurrencyConflict.

A replicated stream refuses a ``Nats-Expected-Last-Subject-Sequence`` that another message of the subject,
still in flight through Raft, may change with error 10164 ("wrong last sequence", no number), not the
10071 of a single server. Both mean nothing was stored; the event store must report both as a conflict
(which the repository resolves by catching up and deciding again), never as a failed append. The catch-up
must see the winner although a follower replica, which stores it a moment later, may answer its reads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys
from symbi_common.errors import ConcurrencyConflict
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE

from .conftest import Cluster

RACERS = 4
ROUNDS = 15


class Claimed(Event, tag="cluster.claimed"):
    by: int


CODEC: EventCodec[Event] = EventCodec([Claimed])


async def test_racing_appends_on_r3_are_conflicts(
    nats_cluster: Cluster,
    registry: KeyRegistry,
    signer_for: Callable[[str], Signer],
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> None:
    clients = [await nats_cluster.connect("lifecycle", [i % 3]) for i in range(RACERS)]
    try:
        stores = [
            EventStore(
                c,
                signer=signer_for("lifecycle"),
                producer="lifecycle",
                registry=registry,
                datakeys=await datakeys_for(c, "lifecycle"),
            )
            for c in clients
        ]
        outcomes: Counter[str] = Counter()
        for _ in range(ROUNDS):
            aggregate = uuid.uuid4().hex[:12]
            # The data key exists before the race, so the racers differ only in their append.
            await stores[0].datakeys.current(f"agent.{aggregate}", new=True)
            results = await asyncio.gather(
                *(
                    s.append("agent", aggregate, [Claimed(by=i)], CODEC, expected=NEW_AGGREGATE)
                    for i, s in enumerate(stores)
                ),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, list)]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1, results
            assert all(isinstance(e, ConcurrencyConflict) for e in lost), lost
            outcomes.update("won" if isinstance(r, list) else str(r) for r in results)
            winner = won[0][0]
            for store, result in zip(stores, results, strict=True):
                if isinstance(result, ConcurrencyConflict):
                    # The conflict names the winner's sequence (a 10164 is asked again until it settles) ...
                    assert result.actual == winner.sequence, result
                # ... and every racer's load, on its own member (a follower for most), reads at least that far.
                stored = await store.load("agent", aggregate, CODEC)
                assert [r.header.event_id for r in stored] == [winner.header.event_id]
        print(dict(outcomes))
    finally:
        for c in clients:
            await c.close()
