"""The main job, end to end: ``symbi run`` on two shipped examples against one real ``symbi up`` runtime.

``hello.symbi`` is Tier 1 (runc), ``text-stats.symbi`` Tier 2 (gVisor runsc). Both run as real
``symbi run --json`` subprocesses against the six services, nats-server, PostgreSQL and Docker; each run
is checked for its result, the sandbox it really ran in (the task's ``tier`` and the runtime recorded in
the sandbox-agent's ``execution.started`` event), the agent back in Ready, its result stored in the
context service, an audit receipt re-verified here, the task's events sealed with its agent's data key, and one
OpenTelemetry trace across the services.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from symbi_cli.credentials import auth_headers
from symbi_cli.events import operator_url
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions, sandbox_host_id
from symbi_common.datakeys import open_service_datakeys
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.sealing import decrypt, open_envelope
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, ExecutionEvent, ExecutionStarted
from symbi_tlog.merkle import verify_inclusion
from symbi_tlog.notes import parse_checkpoint

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "agents"
STATS_INPUT = "the quick brown fox\njumps over the lazy dog\n"

pytestmark = pytest.mark.timeout(240)


async def symbi_run(symbi_exe: str, env: dict[str, str], home: Path, example: str, text: str) -> dict[str, Any]:
    """``symbi run <example> --input <text> --json`` as a real process; its JSON document."""
    proc = await asyncio.create_subprocess_exec(
        symbi_exe,
        "run",
        str(EXAMPLES / example),
        "--input",
        text,
        "--home",
        str(home),
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, f"symbi run {example} exited {proc.returncode}:\n{err.decode()}"
    doc: dict[str, Any] = json.loads(out)
    return doc


async def execution_events(home: Path, task_id: str) -> list[ExecutionEvent]:
    """The task's ``execution.*`` events as the sandbox-agent stored them: verified and decrypted here."""
    keys = home / "keys"
    registry = KeyRegistry.load(keys)
    nc = await nats.connect(**server_options(operator_url(home)), connect_timeout=5, allow_reconnect=False)
    try:
        datakeys = await open_service_datakeys(nc.jetstream(), keys / "audit", "audit", registry)
        found: list[ExecutionEvent] = []
        async for batch in read_subject(nc, EVENTS_STREAM, f"evt.execution.{task_id}"):
            for raw in batch:
                opened = open_envelope(raw.data, subject=raw.subject, sequence=raw.sequence, registry=registry)
                plaintext = decrypt(opened, await datakeys.by_id(opened.header.data_key_id))
                found.append(EXECUTION_CODEC.decode(plaintext, event_type=opened.header.event_type))
        return found
    finally:
        await nc.drain()


def check_receipt(doc: dict[str, Any]) -> None:
    """The printed receipt on its own: every event of the task, each proof leading to the signed root."""
    receipt = doc["receipt"]
    assert receipt["verified"] is True, receipt
    task_id = doc["task"]["task_id"]
    subjects = {e["subject"] for e in receipt["events"]}
    assert subjects == {f"evt.task.{task_id}", f"evt.execution.{task_id}"}
    types = [e["event_type"] for e in receipt["events"]]
    assert types[0] == "task.submitted", types
    assert types[-1] == "task.completed", types
    assert {"execution.started", "execution.exited"} <= set(types), types
    checkpoint, _ = parse_checkpoint(receipt["checkpoint"]["note"])
    assert checkpoint.size == receipt["checkpoint"]["size"]
    for e in receipt["events"]:
        path = [base64.b64decode(h) for h in e["proof"]]
        leaf = base64.b64decode(e["leaf_hash"])
        assert verify_inclusion(leaf, e["leaf_index"], checkpoint.size, path, checkpoint.root), e


async def check_memory(context_url: str, doc: dict[str, Any], query: str, home: Path) -> None:
    """The result is the agent's long-term memory, found again by a query, with the task as its origin."""
    assert doc["memory"]["ids"]
    assert doc["memory"]["origin"] == {"task_id": doc["task"]["task_id"]}
    async with httpx.AsyncClient(timeout=10, headers=auth_headers(home)) as http:
        r = await http.post(
            f"{context_url}/v1/memories/query",
            json={"agent_id": doc["agent"]["id"], "query": query, "min_sequence": doc["memory"]["sequence"]},
        )
    assert r.status_code == 200, r.text
    hits = [h for h in r.json()["results"] if h["id"] in doc["memory"]["ids"]]
    assert len(hits) == 1, r.json()["results"]
    assert hits[0]["text"] == doc["result"]
    assert (hits[0]["kind"], hits[0]["owner"]) == ("long_term", doc["agent"]["id"])
    assert hits[0]["origin"] == {"task_id": doc["task"]["task_id"]}


async def check_agent_ready(lifecycle_url: str, agent_id: str, home: Path) -> None:
    async with httpx.AsyncClient(timeout=10, headers=auth_headers(home)) as http:
        r = await http.get(f"{lifecycle_url}/v1/agents/{agent_id}")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "Ready"


async def check_sealed_per_agent(home: Path, doc: dict[str, Any]) -> None:
    """The task's and its execution's events are sealed with the agent's data keys, and neither has a key of its
    own: a task writes no data key record (``symbi_common.key_names``)."""
    agent, task = doc["agent"]["id"], doc["task"]["task_id"]
    registry = KeyRegistry.load(home / "keys")
    nc = await nats.connect(**server_options(operator_url(home)), connect_timeout=5, allow_reconnect=False)
    try:
        for kind in ("task", "execution"):
            key_ids = set()
            async for batch in read_subject(nc, EVENTS_STREAM, f"evt.{kind}.{task}"):
                for raw in batch:
                    opened = open_envelope(raw.data, subject=raw.subject, sequence=raw.sequence, registry=registry)
                    key_ids.add(opened.header.data_key_id)
            assert key_ids == {f"{kind}.by-agent.{agent}/1"}, (kind, key_ids)
            kv = await nc.jetstream().key_value("DATAKEYS")
            assert (await kv.get(f"{kind}.by-agent.{agent}")).value
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get(f"{kind}.{task}")
    finally:
        await nc.drain()


async def check_sandbox(home: Path, doc: dict[str, Any], tier: str, runtime: str) -> None:
    """The task was placed on ``tier`` and the container really ran under ``runtime``."""
    assert doc["task"]["tier"] == tier
    started = [e for e in await execution_events(home, doc["task"]["task_id"]) if isinstance(e, ExecutionStarted)]
    assert len(started) == 1, started
    assert started[0].tier == tier
    assert started[0].runtime == runtime
    assert started[0].host_id == doc["task"]["host_id"]
    assert started[0].limits.network_io_mbps == 0


async def test_main_job_on_a_tier1_and_a_tier2_example(
    traced_runtime: RuntimeOptions, runtime_home: Path, symbi_exe: str, otlp_receiver: Any
) -> None:
    options = traced_runtime
    env = dict(options.env or {})
    async with LocalRuntime(options) as rt:
        await rt.wait_ready(timeout=90)
        hello, stats = await asyncio.gather(
            symbi_run(symbi_exe, env, runtime_home, "hello.symbi", "world"),
            symbi_run(symbi_exe, env, runtime_home, "text-stats.symbi", STATS_INPUT),
        )

        # Tier 1: the greeting, from a runc container.
        assert hello["result"] == "hello world\n"
        assert (hello["task"]["status"], hello["task"]["outcome"]) == ("completed", "succeeded")
        # On this runtime's own sandbox host (one per home, so runtimes side by side leave each other alone).
        assert hello["task"]["host_id"] == stats["task"]["host_id"] == sandbox_host_id(runtime_home, env)
        await check_sandbox(runtime_home, hello, "tier1", "runc")

        # Tier 2: the text's counts and fingerprint, computed in gVisor.
        assert json.loads(stats["result"]) == {
            "lines": 2,
            "words": 9,
            "bytes": len(STATS_INPUT.encode()),
            "sha256": hashlib.sha256(STATS_INPUT.encode()).hexdigest(),
        }
        assert (stats["task"]["status"], stats["task"]["outcome"]) == ("completed", "succeeded")
        await check_sandbox(runtime_home, stats, "tier2", "runsc")

        for doc, query in ((hello, "hello world"), (stats, "lines words bytes sha256")):
            assert doc["agent"]["state"] == "Ready"
            await check_agent_ready(rt.url_of("lifecycle"), doc["agent"]["id"], rt.home)
            await check_memory(rt.url_of("context"), doc, query, rt.home)
            await check_sealed_per_agent(rt.home, doc)
            check_receipt(doc)

        assert hello["trace_id"] != stats["trace_id"]
        await otlp_receiver.assert_one_trace(hello["trace_id"])
        await otlp_receiver.assert_one_trace(stats["trace_id"])
        assert not otlp_receiver.refused, otlp_receiver.refused
