"""``symbi up``'s nats-server: one least-privilege user per service, no anonymous access.

The tests share one runtime per module (and per xdist worker that runs some of them): a runtime takes seconds
to start, and none of the tests reads what another wrote. Each writes its own subjects, keys, consumer names and
message ids, and the counts it asserts are of those alone (or taken before and after within the test).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from symbi_cli.errors import StartError
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import SERVICE_PORT_OFFSETS, RuntimeOptions
from symbi_common.aggregate import Repository
from symbi_common.datakeys import open_service_datakeys
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.eventstore import EventStore
from symbi_common.follower import Delivery, Follower
from symbi_common.keyfiles import load_service_keys
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.positions import MemoryPositions, Unit
from symbi_common.snapshots import SnapshotStore
from symbi_common.stream_provisioning import require_streams
from symbi_fixtures.runtimes import processes_mentioning, take_free_block
from symbi_lifecycle.config import AgentConfig
from symbi_lifecycle.domain import AGENT, Register

ALL_STREAMS = ("EVENTS", "SNAPSHOTS", "AUDIT", "WORK", "KV_DATAKEYS", "KV_HOSTS", "KV_SCHEDULER", "KV_SECRETS")


#: Every test of the module runs in the module's event loop, the one its shared runtime was started in.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime() -> AsyncIterator[LocalRuntime]:
    """``symbi up`` without services (keyring, nats-server with the deployment's users, PostgreSQL), shared by
    the module's tests; its home is removed afterwards together with anything still running from it."""
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    # Not under pytest's basetemp, for PostgreSQL's sake (see the runtime_home fixture).
    with tempfile.TemporaryDirectory(prefix="symbi-cli-test-") as tmp:
        home = Path(tmp) / "home"
        base_port = take_free_block(max(SERVICE_PORT_OFFSETS.values()) + 4)
        rt = LocalRuntime(RuntimeOptions(home=home, services=[], base_port=base_port, nats_port=None, env=env))
        try:
            await rt.start()
            yield rt
        finally:
            await rt.stop()
            for pid in processes_mentioning(str(home)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def _connect(url: str, errors: list[str]) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    # As every Symbi process connects: with the user's own inbox prefix (``nats_client.server_options``).
    return await nats.connect(**server_options(url), allow_reconnect=False, connect_timeout=3, error_cb=on_error)


async def _stored(operator: NatsClient, subject: str) -> int:
    info = await operator.jetstream().stream_info("EVENTS", subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_anonymous_clients_are_refused(runtime: LocalRuntime) -> None:
    # Spoken in the NATS protocol itself over a socket closed right here: a client library leaves a refused
    # connection's socket to the garbage collector, whose ResourceWarning could surface anywhere later.
    url = runtime.nats_public_url.removeprefix("nats://")
    host, port = url.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = await asyncio.wait_for(reader.readline(), 3)
        assert info.startswith(b"INFO ")
        assert b'"auth_required":true' in info
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), 3)
        assert reply.startswith(b"-ERR 'Authorization Violation'"), reply
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_service_may_only_write_its_own_subjects(runtime: LocalRuntime) -> None:
    errors: list[str] = []
    operator = await _connect(runtime.nats_url, errors)
    lifecycle = await _connect(runtime.nats_url_for("lifecycle"), errors)
    try:
        ack = await lifecycle.request("evt.agent.a1", b"own subject", timeout=3)
        assert b'"seq"' in ack.data

        # The server drops both (no stream ever sees them): neither is answered. Waited out side by side.
        forged, by_operator = await asyncio.gather(
            lifecycle.request("evt.policy.p1", b"forged", timeout=1),
            operator.request("evt.agent.a2", b"operators cannot write events", timeout=1),
            return_exceptions=True,
        )
        assert isinstance(forged, nats.errors.TimeoutError), forged
        assert isinstance(by_operator, nats.errors.TimeoutError), by_operator
        await asyncio.sleep(0.1)
        assert any("permissions violation" in e.lower() and "evt.policy.p1" in e for e in errors), errors
        assert await _stored(operator, "evt.policy.>") == 0
        assert await _stored(operator, "evt.agent.a2") == 0
        assert await _stored(operator, "evt.agent.a1") == 1

        # Nor may it listen to another service's commands.
        sub = await lifecycle.subscribe("cmd.policy.*")
        await asyncio.sleep(0.2)
        assert any("cmd.policy.*" in e for e in errors), errors
        await sub.unsubscribe()
    finally:
        await lifecycle.close()
        await operator.close()


async def _all_refused(
    client: NatsClient, errors: list[str], requests: list[tuple[str, bytes, dict[str, str]]]
) -> None:
    """Every request is a permission violation for ``client``: no answer, and the server says why for each."""

    async def one(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        with pytest.raises(nats.errors.TimeoutError):
            await client.request(subject, payload, timeout=1.0, headers=headers or None)

    await asyncio.gather(*(one(*r) for r in requests))
    await asyncio.sleep(0.1)
    reported = " ".join(e.lower() for e in errors if "permissions violation" in e.lower())
    missing = [subject for subject, _, _ in requests if f'"{subject.lower()}"' not in reported]
    assert not missing, f"no permissions violation reported for {missing}"


async def _all_refused_to(runtime: LocalRuntime, user: str, requests: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """:func:`_all_refused` for ``user`` on a connection of its own, checked against that connection's own error
    reports (so several users can be checked at once)."""
    errors: list[str] = []
    client = await _connect(runtime.nats_url_for(user), errors)
    try:
        await _all_refused(client, errors, requests)
    finally:
        await client.close()


async def _answer(client: NatsClient, subject: str) -> bytes:
    """The first answer to a request that ``client`` may send. Once in a loaded CI run the server answered
    "no responders" right after the subscriber's flush; a refused publish times out instead (and is reported
    as a violation), so asking again for a moment cannot hide a permission problem."""
    for _ in range(10):
        try:
            return bytes((await client.request(subject, b"{}", timeout=3)).data)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"no responder to {subject} for 2 s")


async def test_a_service_calls_only_the_commands_it_needs(runtime: LocalRuntime) -> None:
    """No service may replace a policy set, order an erasure or steer another host's sandboxes; the calls its
    work needs reach their subscriber."""
    # Each client's own error reports: a refusal counts only if the server reported it to that client.
    context_errors: list[str] = []
    sandbox_errors: list[str] = []
    operator_errors: list[str] = []
    context = await _connect(runtime.nats_url_for("context"), context_errors)
    sandbox = await _connect(runtime.nats_url_for("sandbox-agent"), sandbox_errors)
    operator = await _connect(runtime.nats_url, operator_errors)
    try:
        refused = [
            ("cmd.policy.update", b"{}", {}),
            ("cmd.policy.retire", b"{}", {}),
            ("cmd.audit.erase", b"{}", {}),
            ("cmd.scheduler.submit", b"{}", {}),
            ("cmd.sandbox-agent.h1.terminate", b"{}", {}),
        ]
        await asyncio.gather(
            _all_refused(context, context_errors, refused),
            _all_refused(sandbox, sandbox_errors, [("cmd.lifecycle.assign_task", b"{}", {})]),
            # Nor the operator's credential: the CLI sends no command over NATS (it calls the HTTP APIs with a token).
            _all_refused(operator, operator_errors, [*refused, ("cmd.lifecycle.suspend", b"{}", {})]),
        )

        # Allowed calls reach the service that answers them (a stand-in on the context service's credential).
        async def answer(msg: Msg) -> None:
            await msg.respond(b"ok")

        answered = await context.subscribe("cmd.context.store", cb=answer)
        await context.flush()
        assert await _answer(sandbox, "cmd.context.store") == b"ok"
        assert await _answer(context, "cmd.context.store") == b"ok"  # its own
        await answered.unsubscribe()
    finally:
        for client in (context, sandbox, operator):
            await client.close()


async def test_no_service_credential_can_delete_purge_or_reconfigure_streams_or_other_buckets(
    runtime: LocalRuntime,
) -> None:
    errors: list[str] = []
    admin = await _connect(runtime.nats_url_for("admin"), errors)
    try:
        ajs = admin.jetstream()
        # Something to lose, each written by its owner: an event, data keys, a host, the lease.
        for user, bucket, key in (
            ("lifecycle", "DATAKEYS", "agent.a1"),
            ("context", "DATAKEYS", "memory.m1"),
            ("scheduler", "DATAKEYS", "task.t1"),
            ("sandbox-agent", "HOSTS", "h1"),
            ("scheduler", "SCHEDULER", "lease"),
        ):
            owner = await _connect(runtime.nats_url_for(user), errors)
            try:
                await (await owner.jetstream().key_value(bucket)).put(key, b"sealed")
                if user == "lifecycle":
                    await owner.jetstream().publish("evt.agent.a3", b"history")
            finally:
                await owner.close()
        kept = [n for n in ALL_STREAMS if n != "KV_SCHEDULER"]  # the lease expires by itself (TTL)
        before = {name: (await ajs.stream_info(name)).state.messages for name in kept}

        purge = {"KV-Operation": "PURGE"}

        def forbidden_to(user: str) -> list[tuple[str, bytes, dict[str, str]]]:
            requests: list[tuple[str, bytes, dict[str, str]]] = []
            for stream in ALL_STREAMS:
                for verb in ("DELETE", "PURGE", "UPDATE", "CREATE"):
                    requests.append((f"$JS.API.STREAM.{verb}.{stream}", b"{}", {}))
                requests.append((f"$JS.API.STREAM.MSG.DELETE.{stream}", b'{"seq":1}', {}))
            requests.append(("$JS.API.STREAM.CREATE.EVIL", b'{"name":"EVIL","subjects":["evt.>"]}', {}))
            # Another service's data key: neither purged nor overwritten (audit erases any: crypto-shredding).
            for key in ("agent.a1", "memory.m1", "task.t1"):
                if user != "audit" and f"evt.{key.split('.')[0]}.>" not in SERVICE_SUBJECTS.get(user, ()):
                    requests.append((f"$KV.DATAKEYS.{key}", b"", purge))
            # A sealed secret (only `symbi secrets`, the operator's credential, writes the SECRETS bucket).
            owned = (
                ("HOSTS", "h1", "sandbox-agent"),
                ("SCHEDULER", "lease", "scheduler"),
                ("SECRETS", "6462", "operator"),
            )
            for bucket, key, owner in owned:
                if user != owner:
                    requests.append((f"$KV.{bucket}.{key}", b"", purge))
            return requests

        users = [*SERVICE_SUBJECTS, "operator"]
        await asyncio.gather(*(_all_refused_to(runtime, user, forbidden_to(user)) for user in users))

        after = {name: (await ajs.stream_info(name)).state.messages for name in kept}
        assert after == before
        assert (await (await ajs.key_value("DATAKEYS")).get("memory.m1")).value == b"sealed"
    finally:
        await admin.close()


async def test_a_service_does_its_normal_work_with_its_own_credentials(runtime: LocalRuntime) -> None:
    """Append and read back events, snapshots, data keys (create, watch, rotate), consumers: all allowed."""
    errors: list[str] = []
    nc = await _connect(runtime.nats_url_for("lifecycle"), errors)
    try:
        registry = KeyRegistry.load(runtime.keys_dir / "lifecycle")
        keys = load_service_keys(runtime.keys_dir / "lifecycle", "lifecycle")
        datakeys = await open_service_datakeys(nc.jetstream(), runtime.keys_dir / "lifecycle", "lifecycle", registry)
        follower = asyncio.create_task(datakeys.follow_changes())
        store = EventStore(nc, signer=keys.signer, producer="lifecycle", registry=registry, datakeys=datakeys)
        await require_streams(nc.jetstream())
        key = await datakeys.current("agent.w1")
        assert key.key_id == "agent.w1/1"
        assert await datakeys.rotate("agent.w1") == "agent.w1/2"
        snapshots = SnapshotStore(nc, signer=keys.signer, registry=registry, datakeys=datakeys)
        repo = Repository(store, AGENT, snapshots=snapshots, snapshot_every=1)
        await repo.execute("w1", Register(config=AgentConfig(name="w1")))
        await repo.drain()
        loaded = await Repository(store, AGENT).load("w1", fresh=True)
        assert loaded.tip.version == 1
        psub = await nc.jetstream().pull_subscribe("evt.agent.>", durable="lifecycle-test", stream="EVENTS")
        msgs = await psub.fetch(1, timeout=3)
        await msgs[0].ack()
        await psub.unsubscribe()  # not deleted: only admin deletes consumers (test below)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        assert not [e for e in errors if "permissions violation" in e.lower()], errors
    finally:
        await nc.close()


async def test_a_service_cannot_delete_another_services_consumer(runtime: LocalRuntime) -> None:
    """A follower on the scheduler's credential has a consumer named for the scheduler; the context service's
    credential cannot delete it (nor can the scheduler's own: consumers expire), and the follower goes on."""
    # Each client's own error reports: a refusal counts only if the server reported it to that client.
    scheduler_errors: list[str] = []
    context_errors: list[str] = []
    admin_errors: list[str] = []
    scheduler = await _connect(runtime.nats_url_for("scheduler"), scheduler_errors)
    context = await _connect(runtime.nats_url_for("context"), context_errors)
    admin = await _connect(runtime.nats_url_for("admin"), admin_errors)
    seen: list[int] = []

    async def record(unit: Unit, batch: list[Delivery]) -> None:
        seen.extend(d.sequence for d in batch)

    follower = Follower(
        scheduler.jetstream(),
        service="scheduler",
        name="model",
        subjects=("evt.task.>", "evt.execution.>"),
        positions=MemoryPositions(),
        handler=record,
        acks=False,
    )
    task = asyncio.create_task(follower.run())
    try:
        await asyncio.wait_for(follower.ready.wait(), 10)
        name = follower.consumer_name
        assert name.startswith("scheduler_model_")
        delete: list[tuple[str, bytes, dict[str, str]]] = [(f"$JS.API.CONSUMER.DELETE.EVENTS.{name}", b"", {})]
        await asyncio.gather(
            _all_refused(context, context_errors, delete), _all_refused(scheduler, scheduler_errors, delete)
        )
        assert (await admin.jetstream().consumer_info("EVENTS", name)).name == name
        ack = await scheduler.jetstream().publish("evt.task.t1", b"still followed")
        assert await follower.wait_for(ack.seq, timeout=10)
        assert seen[-1] == ack.seq
    finally:
        await follower.stop()
        await asyncio.wait_for(task, 10)
        for client in (scheduler, context, admin):
            await client.close()
    # Everything else the follower did (create, bind, pull) was allowed.
    errors = scheduler_errors + context_errors + admin_errors
    assert [e for e in errors if "permissions violation" in e.lower() and "consumer.delete" not in e.lower()] == []


async def test_symbi_nats_provision_needs_the_admin_credential(runtime: LocalRuntime) -> None:
    from symbi_cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    admin = await asyncio.to_thread(runner.invoke, app, ["nats", "provision", "--url", runtime.nats_url_for("admin")])
    assert admin.exit_code == 0, admin.output
    assert "provisioned" in admin.output
    assert runtime.nats_passwords["admin"] not in admin.output
    refused = await asyncio.to_thread(
        runner.invoke, app, ["nats", "provision", "--url", runtime.nats_url_for("context")]
    )
    assert refused.exit_code == 1, refused.output
    assert "failed" in refused.output


async def test_a_restart_refuses_to_recreate_a_deleted_history_stream(runtime_home: Path, free_base_port: int) -> None:
    """Even the admin deleting EVENTS is not papered over: the next start refuses instead of starting empty."""
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    options = RuntimeOptions(home=runtime_home, services=[], base_port=free_base_port, nats_port=None, env=env)
    first = LocalRuntime(options)
    await first.start()
    try:
        admin = await _connect(first.nats_url_for("admin"), [])
        try:
            await admin.jetstream().delete_stream("EVENTS")
        finally:
            await admin.close()
    finally:
        await first.stop()
    again = LocalRuntime(options)
    with pytest.raises(StartError, match="stream EVENTS is missing"):
        await again.start()


async def test_each_service_is_given_only_its_own_key_directory(runtime: LocalRuntime) -> None:
    root_key = runtime.operator_dir / "root.key"
    assert root_key.exists()
    assert runtime.keys_dir not in root_key.parents
    for service in SERVICE_SUBJECTS:
        env = runtime._spec(service, "").env
        own = runtime.keys_dir / service
        assert env["SYMBI_KEYS_DIR"] == str(own)
        assert {env["SYMBI_SIGNING_KEY_PATH"], env["SYMBI_WRAP_KEY_PATH"], env["SYMBI_ROOT_PUBLIC_KEY_PATH"]} == {
            str(own / "signing.key"),
            str(own / "wrap.key"),
            str(own / "root.pub"),
        }
        # The sandbox-agent also holds its copy of the secrets key (docs/secrets.md): it hands secrets to sandboxes.
        secrets_key = ["secrets.key"] if service == "sandbox-agent" else []
        assert sorted(p.name for p in own.iterdir()) == sorted(
            ["registry.json", "registry.json.sig", "root.pub", *secrets_key, "signing.key", "wrap.key"]
        )
        assert not [v for v in env.values() if str(runtime.operator_dir) in v], service
        assert env["SYMBI_NATS_URL"] == runtime.nats_url_for(service)  # its own NATS user, never admin


async def test_only_the_operator_writes_key_registry_versions(runtime: LocalRuntime) -> None:
    """``symbi up`` published the key files' version with the operator credential; no service may add one."""
    errors: list[str] = []
    operator = await _connect(runtime.nats_url, errors)
    try:
        info = await operator.jetstream().stream_info("REGISTRY")
        assert info.state.messages == 1  # published by `symbi up` before the services started
        assert info.config.deny_delete
        assert info.config.deny_purge
        await asyncio.gather(
            *(_all_refused_to(runtime, service, [("registry.version", b"{}", {})]) for service in SERVICE_SUBJECTS)
        )
        assert (await operator.jetstream().stream_info("REGISTRY")).state.messages == 1
    finally:
        await operator.close()


async def _drop_decisions_consumer(runtime: LocalRuntime, name: str) -> None:
    """Delete a test's consumer of ``DECISIONS`` (only the admin may): the tests share the runtime, and that
    stream, a work queue, takes one consumer per subject."""
    admin = await nats.connect(runtime.nats_url_for("admin"), allow_reconnect=False, connect_timeout=3)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await admin.jetstream().delete_consumer("DECISIONS", name)
    finally:
        await admin.close()


async def test_a_service_queues_decisions_only_as_itself_and_only_the_policy_service_takes_them(
    runtime: LocalRuntime,
) -> None:
    """``dlog.<service>`` names the sender (the policy service refuses a batch that claims another source), so a
    service may publish its own and no other; only the policy service may read the stream."""
    errors: list[str] = []
    context = await _connect(runtime.nats_url_for("context"), errors)
    policy = await _connect(runtime.nats_url_for("policy"), errors)
    try:
        ack = await context.jetstream().publish("dlog.context", b"{}", headers={"Nats-Msg-Id": "own"})
        assert ack.stream == "DECISIONS"
        await _all_refused(
            context,
            errors,
            [
                ("dlog.scheduler", b"{}", {}),
                ("$JS.API.CONSUMER.CREATE.DECISIONS", b"{}", {}),
                ("$JS.API.CONSUMER.MSG.NEXT.DECISIONS.policy_decisions", b"{}", {}),
                ("$JS.API.STREAM.MSG.GET.DECISIONS", b'{"seq": 1}', {}),
            ],
        )
        errors.clear()
        await require_streams(context.jetstream())  # every service checks DECISIONS exists at start-up
        psub = await policy.jetstream().pull_subscribe("dlog.>", durable="policy_test", stream="DECISIONS")
        [msg] = await psub.fetch(1, timeout=3)
        assert msg.subject == "dlog.context"
        await msg.ack()
        await psub.unsubscribe()
        assert not [e for e in errors if "permissions violation" in e.lower()], errors
    finally:
        await context.close()
        await policy.close()
        await _drop_decisions_consumer(runtime, "policy_test")


async def test_a_service_reads_only_its_own_inboxes_and_publishes_only_replies_to_them(runtime: LocalRuntime) -> None:
    """Replies and JetStream deliveries go to the requester's own inboxes (``_INBOX_<user>``). Another service's
    credential may not listen on the shared ``_INBOX.>`` nor on the policy service's inboxes: it sees neither the
    ``DECISIONS`` batch delivered to the policy service (nor the consumer name in its ack subject) nor the reply to
    another service's command. A service still answers the requests it receives (``allow_responses``), and may
    publish to no other inbox."""
    errors: list[str] = []
    spied: list[str] = []
    context = await _connect(runtime.nats_url_for("context"), errors)
    policy = await _connect(runtime.nats_url_for("policy"), errors)
    sandbox = await _connect(runtime.nats_url_for("sandbox-agent"), errors)
    # What a compromised context service could do: subscribe with any client, whatever inbox prefix it uses.
    spy_errors: list[str] = []

    async def on_spy_error(exc: Exception) -> None:
        spy_errors.append(str(exc))

    spy = await nats.connect(
        runtime.nats_url_for("context"), allow_reconnect=False, connect_timeout=3, error_cb=on_spy_error
    )

    async def spy_on(msg: Msg) -> None:
        spied.append(f"{msg.subject} {msg.reply}")

    try:
        for subject in ("_INBOX.>", "_INBOX_policy.>", "_INBOX_sandbox-agent.>"):
            await spy.subscribe(subject, cb=spy_on)
        await spy.flush()
        await asyncio.sleep(0.2)

        ack = await context.jetstream().publish("dlog.context", b"{}", headers={"Nats-Msg-Id": "spied-on"})
        assert ack.stream == "DECISIONS"
        psub = await policy.jetstream().pull_subscribe("dlog.>", durable="policy_inbox_test", stream="DECISIONS")
        [msg] = await psub.fetch(1, timeout=3)
        assert msg.subject == "dlog.context"
        await msg.ack()
        await psub.unsubscribe()

        # A command's reply reaches its caller: the context service replies to the request it received.
        async def answer(msg: Msg) -> None:
            await msg.respond(b"memory text")

        answered = await context.subscribe("cmd.context.retrieve", cb=answer)
        await context.flush()
        assert await _answer(sandbox, "cmd.context.retrieve") == b"memory text"
        await answered.unsubscribe()

        # But it may not publish into another user's inbox unasked.
        await context.publish("_INBOX_policy.forged", b"forged")
        await context.flush()
        await asyncio.sleep(0.3)
        assert spied == [], spied
        refused = " ".join(e.lower() for e in spy_errors if "permissions violation" in e.lower())
        assert '"_inbox.>"' in refused, spy_errors
        assert '"_inbox_policy.>"' in refused, spy_errors
        assert any("permissions violation" in e.lower() and "_inbox_policy.forged" in e.lower() for e in errors), errors
        assert not [e for e in errors if "permissions violation" in e.lower() and "forged" not in e], errors
    finally:
        for client in (context, policy, sandbox, spy):
            await client.close()
        await _drop_decisions_consumer(runtime, "policy_inbox_test")
