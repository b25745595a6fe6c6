"""Two replicas of a service behind the same NATS subjects: losing one loses no command and doubles none.

Commands reach a service through a NATS queue group (``cmd.policy.*``, queue ``policy``:
symbi_common.commands), so any number of replicas may serve them and each request reaches exactly one. Two
policy processes run against one real nats-server (``symbi up``'s, with the generated per-service users); a
client registers policy sets and asks for decisions through the queue group, and one replica is killed with
SIGKILL part-way. Every registration is answered (a request lost with the killed replica is retried and then
either succeeds or is refused as already registered, never applied twice), the survivor serves the rest, and
the stream holds exactly one registration event per set. The failover time (kill → next answer) is printed.
The same for two lifecycle replicas sharing one PostgreSQL read model (agents registered over
``cmd.lifecycle.register``): each agent registered once, and its row projected exactly once per event. And for
two context replicas, each with its own vector index (as the Kubernetes Deployment runs them), taking documents
over ``cmd.context.ingest`` from concurrent writers: each document stored once, and found once in the index of
the survivor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from symbi_cli.events import tail
from symbi_cli.postgres_server import DATABASE_URL_ENV, create_database
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions, service_command
from symbi_cli.supervisor import RestartPolicy, ServiceSpec, Supervisor
from symbi_common.commands import CommandClient
from symbi_common.errors import AlreadyExists, InfrastructureError, NotFound, SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options

pytestmark = pytest.mark.timeout(300)  # about 10 s; in the default run

HELLO = Path(__file__).resolve().parents[2] / "examples" / "agents" / "hello.symbi"
SETS = 40
KILL_AFTER = 12
#: Each set forbids one tool of its own, so sets differ and decisions about other tools are unaffected.
CEDAR = 'forbid (principal is Agent, action == Action::"tool.invoke", resource == Tool::"{set_id}");'


def replica_spec(
    rt: LocalRuntime, name: str, port: int, env: dict[str, str], service: str = "policy", database_url: str = ""
) -> ServiceSpec:
    """A ``service`` process as ``symbi up`` starts one (its NATS user, its key directory), on its own HTTP port."""
    keys = rt.keys_dir / service
    return ServiceSpec(
        name=name,
        argv=service_command(service),
        env=dict(
            env,
            PYTHONUNBUFFERED="1",
            SYMBI_NATS_URL=rt.nats_url_for(service),
            SYMBI_DATABASE_URL=database_url,
            SYMBI_KEYS_DIR=str(keys),
            SYMBI_SIGNING_KEY_PATH=str(keys / "signing.key"),
            SYMBI_WRAP_KEY_PATH=str(keys / "wrap.key"),
            SYMBI_ROOT_PUBLIC_KEY_PATH=str(keys / "root.pub"),
            SYMBI_HTTP_HOST="127.0.0.1",
            SYMBI_HTTP_PORT=str(port),
        ),
        ready_url=f"http://127.0.0.1:{port}/readyz",
        cwd=rt.home,
    )


async def served_registrations(port: int, action: str = "register") -> float:
    """``symbi_commands_total{action=<action>, outcome="ok"}`` of the replica on ``port`` (any service)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("symbi_commands_total{") and f'action="{action}"' in line and 'outcome="ok"' in line
    )


async def register(client: CommandClient, set_id: str) -> tuple[str, int]:
    """Register ``set_id`` until the queue group answers; (how it ended, attempts)."""
    body = {"set_id": set_id, "cedar": CEDAR.format(set_id=set_id)}
    for attempt in range(1, 6):
        try:
            await client.call("policy", "register", body, dict, timeout=3.0)
            return "registered", attempt
        except AlreadyExists:
            return "already-registered", attempt  # an earlier attempt took effect before its replica died
        except InfrastructureError:
            await asyncio.sleep(0.2)  # no answer: the replica that had the request is gone; ask again
    return "unanswered", 5


async def denied_soon(client: CommandClient, set_id: str, within_s: float = 10.0) -> bool:
    """Whether a decision about ``set_id``'s tool comes out deny within ``within_s``: each replica follows the
    stream, so one that did not register the set applies it a moment later."""
    request = {
        "principal": {"type": "Agent", "id": "a"},
        "action": "tool.invoke",
        "resource": {"type": "Tool", "id": set_id},
    }
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            decision = await client.call("policy", "decide", request, dict, timeout=3.0)
        except InfrastructureError:
            continue  # lost with the replica that had it (no answer): ask again, as any caller does
        if decision["effect"] == "deny":
            return True
        await asyncio.sleep(0.05)
    return False


async def test_killing_one_policy_replica_loses_no_command_and_doubles_none(
    tmp_path: Path, free_base_port: int, cli_env: dict[str, str]
) -> None:
    # Only NATS (and the keyring): no service of the runtime's own, and no database (policy keeps none).
    env = dict(cli_env, **{DATABASE_URL_ENV: "postgresql://unused.invalid/none"})
    options = RuntimeOptions(home=tmp_path / "home", base_port=free_base_port, nats_port=None, services=[], env=env)
    ports = {"policy-a": free_base_port + 2, "policy-b": free_base_port + 3}
    async with LocalRuntime(options) as rt:
        specs = [replica_spec(rt, name, port, env) for name, port in ports.items()]
        # A killed replica stays down for the rest of the test: the survivor alone must serve.
        replicas = Supervisor(specs, policy=RestartPolicy(initial_backoff=600), grace_period=5)
        async with replicas:
            await replicas.wait_ready(timeout=180)
            nc = await nats.connect(**server_options(rt.nats_url_for("policy")), connect_timeout=5)
            client = CommandClient(nc, timeout=3.0)
            outcomes: dict[str, tuple[str, int]] = {}
            failover_s = None
            try:
                for i in range(SETS):
                    if i == KILL_AFTER:
                        served = {name: await served_registrations(port) for name, port in ports.items()}
                        assert all(served.values()), f"one replica served every command before the kill: {served}"
                        os.kill(replicas.pids()["policy-a"], signal.SIGKILL)
                        killed_at = time.monotonic()
                    set_id = f"replica-{i:03d}"
                    outcomes[set_id] = await register(client, set_id)
                    if i == KILL_AFTER:
                        failover_s = time.monotonic() - killed_at
                    assert await denied_soon(client, set_id), f"{set_id} is not in force on the replica asked"
                assert not replicas.status("policy-a").running
                assert replicas.status("policy-b").running
                survivor = await served_registrations(ports["policy-b"])
            finally:
                await nc.drain()

            unanswered = {s: o for s, o in outcomes.items() if o[0] == "unanswered"}
            assert not unanswered, unanswered
            registry = KeyRegistry.load(rt.keys_dir)
            per_set: dict[str, list[Any]] = {}
            async for line in tail(rt.nats_url, registry, "evt.policy.>", last=None, follow=False):
                assert line.verified, line
                set_id = line.subject.rsplit(".", 1)[-1]
                if set_id.startswith("replica-"):
                    per_set.setdefault(set_id, []).append(line.event_type)
            assert sorted(per_set) == sorted(outcomes), "a registration is missing from the stream"
            doubled = {s: types for s, types in per_set.items() if len(types) != 1}
            assert not doubled, f"applied more than once: {doubled}"
            retried = {s: o for s, o in outcomes.items() if o[1] > 1}
            print(
                f"\n{SETS} registrations through 2 replicas, replica A SIGKILLed after {KILL_AFTER}: "
                f"failover {failover_s:.2f} s, retried {retried}, survivor served {survivor:.0f}"
            )


async def register_agent(client: CommandClient, agent_id: str) -> tuple[str, int]:
    """Register the hello agent as ``agent_id`` through the lifecycle queue group; (how it ended, attempts)."""
    body = {"agent_id": agent_id, "definition": HELLO.read_text(), "file": str(HELLO)}
    for attempt in range(1, 6):
        try:
            agent = await client.call("lifecycle", "register", body, dict, timeout=10.0)
            assert agent["state"] == "Ready", agent
            return "registered", attempt
        except AlreadyExists:
            return "already-registered", attempt
        except InfrastructureError:
            await asyncio.sleep(0.2)
    return "unanswered", 5


async def test_killing_one_lifecycle_replica_loses_no_registration_and_projects_each_event_once(
    tmp_path: Path, free_base_port: int, cli_env: dict[str, str]
) -> None:
    """Two lifecycle replicas share one PostgreSQL read model: each event is projected once (the row's
    version equals the agent's events in the stream), whichever replica is left."""
    options = RuntimeOptions(
        home=tmp_path / "home", base_port=free_base_port, nats_port=None, services=["policy"], env=cli_env
    )
    ports = {"lifecycle-a": free_base_port + 7, "lifecycle-b": free_base_port + 8}
    agents = 16
    async with LocalRuntime(options) as rt:
        await rt.wait_ready(timeout=180)
        assert rt.postgres is not None
        database_url = await create_database(rt.postgres.uri, "symbi_lifecycle")
        specs = [replica_spec(rt, n, p, cli_env, "lifecycle", database_url) for n, p in ports.items()]
        replicas = Supervisor(specs, policy=RestartPolicy(initial_backoff=600), grace_period=5)
        async with replicas:
            await replicas.wait_ready(timeout=180)
            nc = await nats.connect(**server_options(rt.nats_url_for("lifecycle")), connect_timeout=5)
            client = CommandClient(nc, timeout=10.0)
            outcomes: dict[str, tuple[str, int]] = {}
            try:
                killed = False
                for i in range(agents):
                    if i >= agents // 2 and not killed:
                        # The queue group picks a replica at random: kill once both have served (6 registrations
                        # all went to one replica once in CI, a 1-in-32 chance).
                        served = {name: await served_registrations(port) for name, port in ports.items()}
                        if all(served.values()):
                            os.kill(replicas.pids()["lifecycle-a"], signal.SIGKILL)
                            killed = True
                        else:
                            assert i < agents - 2, f"one replica served every command: {served}"
                    agent_id = f"replica-agent-{i:02d}"
                    outcomes[agent_id] = await register_agent(client, agent_id)
                assert killed
                assert not replicas.status("lifecycle-a").running
                assert not {a: o for a, o in outcomes.items() if o[0] == "unanswered"}
                per_agent = await stored_agent_events(rt)
                rows = {a: await projected(client, a, len(per_agent.get(a, []))) for a in outcomes}
            finally:
                await nc.drain()
            assert sorted(per_agent) == sorted(outcomes)
            for agent_id, types in per_agent.items():
                assert types.count(types[0]) == 1, f"{agent_id}: {types}"  # registered once
                assert rows[agent_id]["state"] == "Ready"
                # Projected once each: the row's version is the number of the agent's events, no more.
                assert rows[agent_id]["aggregate_version"] == len(types), (agent_id, rows[agent_id], types)
            retried = {a: o for a, o in outcomes.items() if o[1] > 1}
            print(
                f"\n{agents} agents registered through 2 lifecycle replicas, one SIGKILLed half-way; retried {retried}"
            )
            print(f"events per agent: {sorted({tuple(t) for t in per_agent.values()})}")


async def stored_agent_events(rt: LocalRuntime) -> dict[str, list[str]]:
    """The event types stored for each ``replica-agent-*``, verified, in stream order."""
    registry = KeyRegistry.load(rt.keys_dir)
    per_agent: dict[str, list[str]] = {}
    async for line in tail(rt.nats_url, registry, "evt.agent.>", last=None, follow=False):
        assert line.verified, line
        agent_id = line.subject.rsplit(".", 1)[-1]
        if agent_id.startswith("replica-agent-"):
            per_agent.setdefault(agent_id, []).append(line.event_type)
    return per_agent


async def projected(client: CommandClient, agent_id: str, version: int, within_s: float = 30.0) -> dict[str, Any]:
    """The agent's read-model row once it has reached ``version`` (the projection follows the stream)."""
    deadline = time.monotonic() + within_s
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            row = await client.call("lifecycle", "get", {"agent_id": agent_id}, dict)
        except NotFound:
            row = {}
        if row.get("aggregate_version", 0) >= version:
            return row
        await asyncio.sleep(0.1)
    return row


#: Knowledge bases are granted by name (symbi_context.access.memory_resource: no owning agent).
KB_GRANT = (
    'permit (principal == Agent::"librarian", action in [Action::"memory.read", Action::"memory.write"], '
    'resource == Memory::"replicas");'
)


async def ingest_document(client: CommandClient, doc_id: str, text: str) -> tuple[str, int]:
    """Ingest ``text`` as document ``doc_id`` (the caller names it, so a retry cannot store it twice)."""
    body = {"agent_id": "librarian", "kb_id": "replicas", "title": doc_id, "text": text, "document_id": doc_id}
    for attempt in range(1, 6):
        try:
            await client.call("context", "ingest", body, dict, timeout=10.0)
            return "ingested", attempt
        except InfrastructureError:
            await asyncio.sleep(0.2)
        except SymbiError as exc:
            if "already exists" not in str(exc):
                raise
            return "already-ingested", attempt  # an earlier attempt took effect before its replica died
    return "unanswered", 5


async def test_killing_one_context_replica_under_load_stores_each_document_once(
    tmp_path: Path, free_base_port: int, cli_env: dict[str, str]
) -> None:
    options = RuntimeOptions(
        home=tmp_path / "home", base_port=free_base_port, nats_port=None, services=["policy"], env=cli_env
    )
    ports = {"context-a": free_base_port + 7, "context-b": free_base_port + 8}
    documents, writers = 24, 4
    texts = {
        f"doc-{i:02d}": f"replica ledger entry {i}: {' '.join(f'w{i}x{j}' for j in range(8))}" for i in range(documents)
    }
    async with LocalRuntime(options) as rt:
        await rt.wait_ready(timeout=180)
        specs = []
        for name, port in ports.items():
            spec = replica_spec(rt, name, port, cli_env, "context")
            spec.env["SYMBIONT_VECTOR_DATA_PATH"] = str(tmp_path / f"vectors-{name}")  # one index per replica
            specs.append(spec)
        replicas = Supervisor(specs, policy=RestartPolicy(initial_backoff=600), grace_period=5)
        async with replicas:
            await replicas.wait_ready(timeout=180)
            nc = await nats.connect(**server_options(rt.nats_url_for("context")), connect_timeout=5)
            client = CommandClient(nc, timeout=10.0)
            admin = await nats.connect(**server_options(rt.nats_url_for("policy")), connect_timeout=5)
            grant = {"set_id": "replicas-kb", "cedar": KB_GRANT}
            await CommandClient(admin, timeout=10.0).call("policy", "register", grant, dict)
            await admin.drain()
            outcomes: dict[str, tuple[str, int]] = {}
            queue = list(texts)
            killed = asyncio.Event()

            deciding = asyncio.Lock()

            async def writer() -> None:
                while queue:
                    doc_id = queue.pop(0)
                    outcomes[doc_id] = await ingest_document(client, doc_id, texts[doc_id])
                    if len(outcomes) < documents // 3 or killed.is_set():
                        continue
                    async with deciding:  # one writer decides; the others keep writing meanwhile
                        if killed.is_set():
                            continue
                        # The kill comes once both replicas have answered ingests (a replica's first one can
                        # take long on a loaded machine, while the other answers the rest).
                        served = {name: await served_registrations(port, "ingest") for name, port in ports.items()}
                        if not all(served.values()):
                            assert len(outcomes) < 2 * documents // 3, f"one replica served every command: {served}"
                            continue
                        killed.set()
                        os.kill(replicas.pids()["context-a"], signal.SIGKILL)  # the other writers keep going

            try:
                await asyncio.gather(*(writer() for _ in range(writers)))
                assert not replicas.status("context-a").running
                assert not {d: o for d, o in outcomes.items() if o[0] == "unanswered"}
                # Every document is in the survivor's index exactly once (it follows the stream).
                found = {}
                for doc_id, text in texts.items():
                    query = {"agent_id": "librarian", "query": text, "knowledge_bases": ["replicas"], "limit": 50}
                    deadline = time.monotonic() + 30
                    while True:
                        results = (await client.call("context", "search_knowledge", query, dict))["results"]
                        found[doc_id] = [r for r in results if r["document_id"] == doc_id]
                        if found[doc_id] or time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.2)
            finally:
                await nc.drain()
            assert {d: len(hits) for d, hits in found.items() if len(hits) != 1} == {}
            registry = KeyRegistry.load(rt.keys_dir)
            # One knowledge.ingested event per document (payloads are sealed: counted, with distinct versions).
            versions = [
                line.aggregate_version
                async for line in tail(rt.nats_url, registry, "evt.knowledge.replicas", last=None, follow=False)
                if line.verified and line.event_type == "knowledge.ingested"
            ]
            assert len(versions) == documents, f"{len(versions)} documents stored for {documents} ingested"
            assert sorted(versions) == list(range(1, documents + 1)), versions
            retried = {d: o for d, o in outcomes.items() if o[1] > 1}
            print(
                f"\n{documents} documents from {writers} writers through 2 context replicas, one SIGKILLed: retried {retried}"
            )
