"""The shared fixtures themselves: real servers come up, clients connect, databases are fresh."""

from __future__ import annotations

import asyncpg


async def test_nats_fixture_round_trip(nc, js):
    sub = await nc.subscribe("hello")
    await nc.publish("hello", b"world")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"world"
    info = await js.account_info()
    # provisioned as the admin does: EVENTS, SNAPSHOTS, AUDIT, WORK, REGISTRY, DECISIONS, MESSAGES, DEADLETTER, seven
    # KV buckets
    assert info.streams == 15


async def test_database_url_is_fresh(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        assert (await conn.fetchval("select current_database()")).startswith("test_")
        await conn.execute("create table t (x int)")
    finally:
        await conn.close()


async def test_database_url_is_fresh_again(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select count(*) from pg_tables where tablename = 't'") == 0
    finally:
        await conn.close()


async def test_provisioned_and_keys(provisioned, js, keys_dir, registry, signer_for, datakeys_for, make_store):
    names = sorted([s.config.name for s in await js.streams_info()])
    assert names == [
        "AUDIT",
        "DEADLETTER",
        "DECISIONS",
        "EVENTS",
        "KV_AGENT_KEYS",
        "KV_BUS_DELIVERED",
        "KV_DATAKEYS",
        "KV_HOSTS",
        "KV_OPERATOR_REVOCATIONS",
        "KV_SCHEDULER",
        "KV_SECRETS",
        "MESSAGES",
        "REGISTRY",
        "SNAPSHOTS",
        "WORK",
    ]
    assert (keys_dir / "registry.json").exists()
    lifecycle = signer_for("lifecycle")
    assert registry.service_of(lifecycle.key_id) == "lifecycle"
    assert (await datakeys_for(provisioned, "audit")).service == "audit"
    store = await make_store("policy", max_event_bytes=1234)
    assert store.producer == "policy"
    assert store.signer.key_id == signer_for("policy").key_id
    assert store.max_event_bytes == 1234
    assert store.nc is provisioned


async def test_nats_connect_gives_separate_clients(nc, nats_connect):
    other = await nats_connect()
    assert other is not nc
    sub = await nc.subscribe("ping")
    await nc.flush()  # the server knows the subscription before the other client publishes
    await other.publish("ping", b"from other")
    assert (await sub.next_msg(timeout=10)).data == b"from other"
