"""A projection in one replica meets an event signed with a key its registry has not learnt yet (real nats-server,
real PostgreSQL, two runtimes of one service: two processes' worth of registries).

After ``symbi keys rotate`` the replica whose registry follower applied the new version first signs with the new
key at once; another replica's projection may receive that event before its own follower delivers the version.
The event must be applied once that registry has caught up with the ``REGISTRY`` stream, not rejected (which would
turn every later event of the aggregate into a version gap); a key in no registry version is still rejected.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import Signer
from symbi_common.envelope import ZERO_HASH
from symbi_common.errors import VersionGap
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.keyfiles import rotate_service_key
from symbi_common.keyring import SERVICE_SUBJECTS
from symbi_common.nats_client import server_options, with_credentials
from symbi_common.natsauth import OPERATOR
from symbi_common.sealing import NEW_AGGREGATE, seal
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_common.streams import RawMessage
from symbi_fixtures.key_rotation import eventually, publish_key_files, rotate, runtime_env, signing_and_lagging
from symbi_fixtures.messaging import DEPLOYMENT_PASSWORDS


class Noted(Event, tag="test.rotation_noted"):
    text: str


codec: EventCodec[Event] = EventCodec([Noted])


class AgentVersions:
    """A read model like the services' own: one row per aggregate with the last version applied, verified with the
    runtime's registry; an event that does not follow the row's version is a :class:`VersionGap`."""

    name = "rotation_versions"
    filter_subjects: Sequence[str] = ("evt.agent.>",)
    schema: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS rotation_versions (aggregate_id text PRIMARY KEY, version int NOT NULL)",
    )
    checks_before_writes = True

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def apply(self, conn: Any, message: RawMessage) -> None:
        rec = await self.store.open_one(message.data, message.subject, message.sequence, codec)
        h = rec.header
        applied = await conn.fetchval("SELECT version FROM rotation_versions WHERE aggregate_id = $1", h.aggregate_id)
        if h.aggregate_version != (applied or 0) + 1:
            raise VersionGap(
                f"version {h.aggregate_version} does not follow {applied}",
                sequence=message.sequence,
                subject=message.subject,
            )
        await conn.execute(
            "INSERT INTO rotation_versions (aggregate_id, version) VALUES ($1, $2)"
            " ON CONFLICT (aggregate_id) DO UPDATE SET version = EXCLUDED.version",
            h.aggregate_id,
            h.aggregate_version,
        )


@pytest.fixture
async def replicas(
    nats_url: str, database_url: str, keys_dir: Path, provisioned: NatsClient
) -> AsyncIterator[tuple[ServiceRuntime, ServiceRuntime]]:
    """Two running replicas of lifecycle on one NATS server and one database; the second one's key registry
    follower is stopped right after its start (it lags behind the stream for as long as the test wants)."""
    env = runtime_env(nats_url, keys_dir, SYMBI_DATABASE_URL=database_url, SYMBI_POLICY__ENFORCEMENT="allow-all")
    lagging = ServiceRuntime("lifecycle", load_settings(env=env))
    signing = ServiceRuntime("lifecycle", load_settings(env=env))
    async with signing_and_lagging(signing, lagging, provisioned, keys_dir) as pair:
        yield pair


async def test_an_event_signed_with_a_key_the_registry_has_not_learnt_yet_is_applied_not_rejected(
    replicas: tuple[ServiceRuntime, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    signing, lagging = replicas
    runner = await lagging.add_projection(AgentVersions(lagging.store))
    assert lagging.pool is not None
    pool = lagging.pool
    agg = uuid.uuid4().hex[:12]
    (first,) = await signing.store.append("agent", agg, [Noted(text="old key")], codec, expected=NEW_AGGREGATE)
    assert await runner.wait_for(first.sequence)
    version_before = lagging.registry.version

    # `symbi keys rotate lifecycle`: the new key in the service's directory, the version on REGISTRY. The signing
    # replica applies it and signs with the new key; the lagging one has not seen the version.
    new_key_id = await rotate(signing, provisioned, keys_dir)
    assert signing.registry.version == version_before + 1
    await asyncio.sleep(0.3)
    assert lagging.registry.version == version_before
    assert lagging.registry.key(new_key_id) is None

    (second,) = await signing.store.append("agent", agg, [Noted(text="new key")], codec, expected=first.tip)
    (third,) = await signing.store.append("agent", agg, [Noted(text="new key again")], codec, expected=second.tip)
    assert second.header.signing_key_id == new_key_id
    assert await runner.wait_for(third.sequence)

    # Applied, not rejected: the lagging replica's registry caught up with the stream, and the aggregate's later
    # event is no version gap.
    assert await pool.fetchval("SELECT version FROM rotation_versions WHERE aggregate_id = $1", agg) == 3
    rejects = await pool.fetch("SELECT sequence, code FROM symbi_projection_rejects")
    assert [(r["sequence"], r["code"]) for r in rejects] == []
    assert lagging.registry.version == version_before + 1
    assert lagging.registry.key(new_key_id) is not None
    assert lagging.store.signer.key_id == new_key_id  # it also loaded its own rotated key, as following would
    assert runner.halted is None

    # A key in no registry version is still refused, once the registry is current; the aggregate gets no row.
    forger = Signer.generate()
    forged_agg = uuid.uuid4().hex[:12]
    data_key = await signing.datakeys.current(f"agent.{forged_agg}")
    forged, _ = seal(
        signer=forger, producer="lifecycle", data_key=data_key, aggregate_type="agent", aggregate_id=forged_agg,
        aggregate_version=1, event_type="test.rotation_noted", schema_version=1,
        payload=codec.encode(Noted(text="signed with a key no version names")), prev_hash=ZERO_HASH,
    )  # fmt: skip
    ack = await provisioned.jetstream().publish(f"evt.agent.{forged_agg}", forged)
    (after,) = await signing.store.append("agent", agg, [Noted(text="after the forgery")], codec, expected=third.tip)
    assert await runner.wait_for(after.sequence)
    rejects = await pool.fetch("SELECT sequence, code FROM symbi_projection_rejects")
    assert [(r["sequence"], r["code"]) for r in rejects] == [(ack.seq, "unknown_signing_key")]
    assert await pool.fetchval("SELECT count(*) FROM rotation_versions WHERE aggregate_id = $1", forged_agg) == 0
    assert await pool.fetchval("SELECT version FROM rotation_versions WHERE aggregate_id = $1", agg) == 4
    assert lagging.registry.key(forger.key_id) is None


async def test_the_registry_follower_goes_on_after_a_catch_up_without_applying_a_version_twice(
    replicas: tuple[ServiceRuntime, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    _, lagging = replicas
    version_before = lagging.registry.version
    rotate_service_key(keys_dir, "lifecycle")
    await publish_key_files(provisioned, keys_dir)
    assert await lagging.keys.catch_up() == 1
    assert lagging.registry.version == version_before + 1
    assert await lagging.keys.catch_up() == 0  # current: nothing read but the stream's last message

    # Following again goes on after what the catch-up applied: the next version, and no refusal of the one before.
    lagging.spawn(lagging.keys.follow(lagging.js), "keys:follow")
    newest = rotate_service_key(keys_dir, "lifecycle")
    await publish_key_files(provisioned, keys_dir)
    await eventually(lambda: lagging.registry.version == version_before + 2, "the follower applies the next version")
    await eventually(lambda: lagging.store.signer.key_id == newest.key_id, "the replica signs with the newest key")
    assert not [e for e in lagging.recent_errors if "key registry" in e], lagging.recent_errors


async def test_every_service_may_catch_up_with_the_registry_stream_under_its_own_credential(
    secured_nats: str, keys_dir: Path
) -> None:
    operator = await nats_connect_as(secured_nats, OPERATOR)
    runtimes: list[ServiceRuntime] = []
    try:
        await publish_key_files(operator, keys_dir)
        for service in SERVICE_SUBJECTS:
            url = with_credentials(secured_nats, service, DEPLOYMENT_PASSWORDS[service])
            env = {"SYMBI_NATS_URL": url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_POLICY__ENFORCEMENT": "allow-all"}
            rt = ServiceRuntime(service, load_settings(env=env), use_database=False)
            await rt.start()
            runtimes.append(rt)
        follows = [t for t in asyncio.all_tasks() if t.get_name() == "keys:follow"]
        for task in follows:
            task.cancel()
        await asyncio.gather(*follows, return_exceptions=True)
        version = runtimes[0].registry.version
        for _ in range(2):  # two versions behind: the last one and the one between are read
            rotate_service_key(keys_dir, "scheduler")
            await publish_key_files(operator, keys_dir)
        for rt in runtimes:
            assert await rt.keys.catch_up() == 2, rt.name
            assert rt.registry.version == version + 2
    finally:
        for rt in runtimes:
            await rt.stop()
        await operator.drain()


async def nats_connect_as(url: str, user: str) -> NatsClient:
    return await nats.connect(
        **server_options(with_credentials(url, user, DEPLOYMENT_PASSWORDS[user])),
        allow_reconnect=False,
        connect_timeout=5,
    )
