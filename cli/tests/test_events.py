"""``symbi events tail`` against a real JetStream: every stored event shown with its verification."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client as NatsClient
from symbi_cli.events import tail
from symbi_common.crypto import Signer
from symbi_common.envelope import ZERO_HASH
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE, seal

MakeStore = Callable[..., Awaitable[EventStore]]


class Pinged(Event, tag="test.pinged"):
    n: int


codec: EventCodec[Pinged] = EventCodec([Pinged])


async def _fill(make_store: MakeStore, nc: NatsClient, signer_for: Callable[[str], Signer]) -> None:
    store = await make_store()
    tip = NEW_AGGREGATE
    for i in range(3):
        (rec,) = await store.append("agent", "a1", [Pinged(n=i)], codec, expected=tip)
        tip = rec.tip
    await nc.publish("evt.agent.a2", b"\x00garbage")
    key = await store.datakeys.current("agent.a3")
    forged, _ = seal(
        signer=signer_for("policy"), producer="policy", data_key=key, aggregate_type="agent", aggregate_id="a3",
        aggregate_version=1, event_type="test.pinged", schema_version=1, payload=b"", prev_hash=ZERO_HASH,
    )  # fmt: skip
    await nc.publish("evt.agent.a3", forged)
    # A genuine event whose chain link is wrong (prev_hash of nothing, but version 4 of a1).
    gap, _ = seal(
        signer=store.signer, producer="lifecycle", data_key=await store.datakeys.current("agent.a1"),
        aggregate_type="agent", aggregate_id="a1", aggregate_version=5, event_type="test.pinged",
        schema_version=1, payload=b"", prev_hash=tip.hash,
    )  # fmt: skip
    await nc.publish("evt.agent.a1", gap)
    await nc.flush()


async def test_tail_verifies_every_event(
    make_store: MakeStore,
    provisioned: NatsClient,
    nats_url: str,
    registry: KeyRegistry,
    signer_for: Callable[[str], Signer],
) -> None:
    await _fill(make_store, provisioned, signer_for)
    lines = [line async for line in tail(nats_url, registry, "evt.>", last=None, follow=False)]
    assert [(line.sequence, line.subject, line.verified, line.problem_code) for line in lines] == [
        (1, "evt.agent.a1", True, ""),
        (2, "evt.agent.a1", True, ""),
        (3, "evt.agent.a1", True, ""),
        (4, "evt.agent.a2", False, "malformed_event"),
        (5, "evt.agent.a3", False, "unauthorised_signer"),
        (6, "evt.agent.a1", False, "version_gap"),
    ]
    assert [line.aggregate_version for line in lines[:3]] == [1, 2, 3]
    assert {line.producer for line in lines[:3]} == {"lifecycle"}

    last_two = [line async for line in tail(nats_url, registry, "evt.agent.a1", last=2, follow=False)]
    # --last starts mid-stream: the filter keeps a1's events from sequence 5 on; its first is trusted as the tip.
    assert [line.sequence for line in last_two] == [6]


async def test_cli_prints_json_lines_and_fails_on_a_bad_event(
    make_store: MakeStore,
    provisioned: NatsClient,
    nats_url: str,
    keys_dir: Path,
    signer_for: Callable[[str], Signer],
    symbi_exe: str,
    cli_env: dict[str, str],
) -> None:
    await _fill(make_store, provisioned, signer_for)

    def run(*extra: str, keys: Path = keys_dir) -> subprocess.CompletedProcess[str]:
        args = [symbi_exe, "events", "tail", "--nats-url", nats_url, "--keys-dir", str(keys), *extra]
        return subprocess.run(args, capture_output=True, text=True, env=cli_env, timeout=60)

    done = await asyncio.to_thread(run, "--json")
    assert done.returncode == 1, done.stderr  # some events do not verify
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["verified"] for row in rows] == [True, True, True, False, False, False]
    assert rows[0]["event_type"] == "test.pinged"
    assert rows[4]["problem"].startswith("key ed25519:")

    done = await asyncio.to_thread(run, "--subject", "evt.agent.a1", "--last", "4")
    assert done.returncode == 1  # a1's events from sequence 3 on: the version gap at 6 is caught
    assert "version_gap" in done.stdout

    done = await asyncio.to_thread(run, "--subject", "evt.agent.a1", "--last", "6")
    assert done.returncode == 1
    assert done.stdout.count("✓") == 3

    done = await asyncio.to_thread(run, keys=keys_dir / "missing")
    assert done.returncode == 2
    assert "symbi keys init" in done.stdout + done.stderr
