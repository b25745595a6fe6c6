"""The read model: rejects of garbage and forgeries, and exactly-once application across a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from symbi_common.aggregate import Repository
from symbi_common.datakeys import open_service_datakeys
from symbi_common.db import open_pool
from symbi_common.eventstore import EventStore
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.projection import ProjectionRunner
from symbi_common.sealing import ChainTip
from symbi_common.snapshots import SnapshotStore
from symbi_common.streams import RawMessage
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import CODEC, AgentRegistered
from symbi_lifecycle.domain import AGENT, AssignTask, CompleteTask, Initialize, Register
from symbi_lifecycle.projections import AgentProjection

from .conftest import Running
from .test_api import GOOD, post, register

VALID = AgentConfig(name="worker")


async def test_garbage_and_forgeries_do_not_stop_the_projection(running: Running, make_store: Any) -> None:
    runtime = running.app.state.runtime
    js, pool = runtime.js, runtime.pool
    await register(running.http, "ok-1")
    # Raw garbage, straight into the stream on an agent subject.
    await js.publish("evt.agent.x", b"\x00 not a sealed event")
    # A well-formed event signed by a service that may not write agents.
    policy = await make_store("policy")
    await policy.append(
        "agent", "forged", [AgentRegistered(agent_id="forged", config=VALID)], CODEC, expected=ChainTip()
    )
    # A genuine lifecycle event copied onto another agent's subject (replay).
    genuine = await runtime.nc.request("$JS.API.DIRECT.GET.EVENTS.evt.agent.ok-1", b"", timeout=2)
    await js.publish("evt.agent.replayed", genuine.data)

    # Later good events are still applied.
    r = await post(running.http, "ok-1", "assign-task", {"task_id": "after-garbage"})
    seq = r.json()["sequence"]
    view = (await running.http.get("/v1/agents/ok-1", params={"min_sequence": seq})).json()
    assert view["state"] == "Running"
    assert view["current_task"] == "after-garbage"

    rejects = await pool.fetch("SELECT subject, code FROM symbi_projection_rejects ORDER BY sequence")
    assert [(r["subject"], r["code"]) for r in rejects] == [
        ("evt.agent.x", "malformed_event"),
        ("evt.agent.forged", "unauthorised_signer"),
        ("evt.agent.replayed", "subject_mismatch"),
    ]
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM lifecycle.agents")]
    assert ids == ["ok-1"]
    for agent in ("x", "forged", "replayed"):
        assert (await running.http.get(f"/v1/agents/{agent}")).status_code == 404


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(database_url)
    try:
        yield pool
    finally:
        await pool.close()


class Crash(BaseException):
    """The process dies: not an error the runner may catch and retry."""


class CrashAfterCommit(ProjectionRunner):
    """Commits its first batch (events and position), then dies before acknowledging it."""

    crashed_with: list[Any]

    async def _apply_batch(self, msgs: list[Any]) -> None:
        await super()._apply_batch(msgs)
        self.crashed_with = msgs
        raise Crash


async def test_crash_between_commit_and_ack_applies_each_event_once(
    js: Any, pool: asyncpg.Pool, make_store: Any
) -> None:
    store: EventStore = await make_store("lifecycle")
    repo = Repository(store, AGENT)
    last = 0
    for i in range(5):
        await repo.execute(f"c{i}", Register(config=VALID))
        await repo.execute(f"c{i}", Initialize(config=VALID))
        _, records = await repo.execute(f"c{i}", AssignTask(task_id=f"t{i}"))
        last = records[-1].sequence
    projection = AgentProjection(store)

    first = CrashAfterCommit(js, pool, projection, batch=8)
    await first.setup()
    with pytest.raises(Crash):
        await asyncio.wait_for(first.run(), 10)
    committed = len(first.crashed_with)
    assert 0 < committed < 15
    assert await pool.fetchval("SELECT count(*) FROM lifecycle.agent_events") == committed

    second = ProjectionRunner(js, pool, projection, batch=8)
    await second.setup()
    task = asyncio.create_task(second.run())
    try:
        assert await second.wait_for(last, 10)
        # The unacknowledged batch comes again: the stored position makes it a no-op ...
        await second._apply_batch(first.crashed_with)
        # ... and so does the projection itself, by aggregate version, even past the position check.
        m = first.crashed_with[0]
        raw = RawMessage(m.subject, m.metadata.sequence.stream, bytes(m.data), {})
        async with pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, raw)
    finally:
        await second.stop()
        await asyncio.wait_for(task, 10)

    rows = await pool.fetch("SELECT agent_id, aggregate_version, sequence FROM lifecycle.agent_events")
    assert len(rows) == 15
    assert len({r["sequence"] for r in rows}) == 15
    for i in range(5):
        versions = sorted(r["aggregate_version"] for r in rows if r["agent_id"] == f"c{i}")
        assert versions == [1, 2, 3]  # registered, ready, task_assigned
    rows = await pool.fetch("SELECT id, state, aggregate_version FROM lifecycle.agents ORDER BY id")
    assert [(r["id"], r["state"], r["aggregate_version"]) for r in rows] == [(f"c{i}", "Running", 3) for i in range(5)]
    assert await pool.fetchval("SELECT count(*) FROM symbi_projection_rejects") == 0
    assert await pool.fetchval("SELECT position FROM symbi_projection_positions") == last


async def test_config_in_read_model_round_trips(running: Running) -> None:
    agent = await register(running.http, "rt-1", {**GOOD, "filesystem_access": [{"path": "/data", "mode": "read"}]})
    view = (await running.http.get("/v1/agents/rt-1", params={"min_sequence": agent["sequence"]})).json()
    assert msgspec.convert(view["config"], AgentConfig) == msgspec.convert(agent["config"], AgentConfig)


async def test_snapshot_and_full_replay_agree(make_store: Any, provisioned: Any, keys_dir: Path) -> None:
    store: EventStore = await make_store("lifecycle")
    datakeys = await open_service_datakeys(
        provisioned.jetstream(), keys_dir / "lifecycle", "lifecycle", KeyRegistry.load(keys_dir)
    )
    snapshots = SnapshotStore(
        provisioned,
        signer=load_signer(keys_dir / "lifecycle" / "signing.key"),
        registry=KeyRegistry.load(keys_dir),
        datakeys=datakeys,
    )
    writer = Repository(store, AGENT, snapshots=snapshots, snapshot_every=4)
    await writer.execute("snap", Register(config=VALID))
    await writer.execute("snap", Initialize(config=VALID))
    for i in range(5):
        await writer.execute("snap", AssignTask(task_id=f"t{i}"))
        await writer.execute("snap", CompleteTask())
    await writer.drain()
    assert await snapshots.load("agent", "snap", AGENT.state_type) is not None

    from_snapshot = await Repository(store, AGENT, snapshots=snapshots).load("snap")
    from_events = await Repository(store, AGENT).load("snap")
    assert from_snapshot.state == from_events.state
    assert from_snapshot.tip == from_events.tip
    assert from_events.state.tasks_completed == 5
