"""The log guard: a stream that is missing, shorter or rolled back against the last signed checkpoint is a
critical finding on ``/readyz``, ``/v1/audit/status`` and ``/metrics`` — at once and after a restart — and
never a fresh start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient
from symbi_audit.main import build_app
from symbi_common.settings import load_settings
from symbi_common.stream_provisioning import provision_streams
from symbi_common.streams import EVENTS_STREAM

from .conftest import Writer, audit_env, read_log


async def _wait_critical(http: httpx.AsyncClient, kind: str) -> dict:
    for _ in range(100):
        status = (await http.get("/v1/audit/status")).json()
        if kind in status["critical"]:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"no critical {kind}: {status}")


async def _signed_through(service: Any, last: int) -> int:
    """Waits until the verifier took every event up to ``last`` and signed a checkpoint ending there; its size."""
    assert await service.runner.wait_for(last)
    for _ in range(100):
        if (cp := await service.store.checkpoint()) is not None and cp.last_sequence == last:
            return int(cp.size)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no checkpoint up to sequence {last}")


async def _critical_everywhere(http: httpx.AsyncClient, kind: str) -> None:
    status = await _wait_critical(http, kind)
    assert list(status["critical"]) == [kind]
    ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["log_intact"] is False
    metrics = (await http.get("/metrics")).text
    assert f'symbi_audit_critical{{kind="{kind}"}} 1.0' in metrics
    findings = (await http.get("/v1/audit/findings", params={"kind": kind})).json()["items"]
    assert len(findings) == 1


async def test_a_deleted_shortened_or_rewritten_stream_is_critical_and_never_a_fresh_start(
    writer: Writer,
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    operator_headers: dict[str, str],
) -> None:
    settings = load_settings(env=audit_env(nats_url, database_url, keys_dir, SYMBI_AUDIT__GUARD_INTERVAL_S="0.1"))
    js = provisioned.jetstream()
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit", headers=operator_headers) as http:
            service = app.state.audit
            last = await writer.mixed(20)
            await _signed_through(service, last)
            signed = await service.store.status()
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.get("/v1/audit/status")).json()["critical"] == {}

            await js.delete_stream(EVENTS_STREAM)  # what a stolen admin credential can do
            await _critical_everywhere(http, "stream_missing")

            await provision_streams(js)  # re-created, empty, and written again: shorter than what was signed
            writer.tips.clear()
            await writer.agent("x", 3)
            await _critical_everywhere(http, "stream_shorter")

            await writer.agent("x", last)  # now longer again, but another history
            await _critical_everywhere(http, "stream_rolled_back")
            # Nothing of the new stream entered the signed tree: no fresh start, no grafting.
            await asyncio.sleep(0.3)
            assert await service.store.status() == {**signed, "findings": signed["findings"] + 3}
    # A restart finds it at once, from its own memory of what it signed.
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit", headers=operator_headers) as http:
            status = (await http.get("/v1/audit/status")).json()
            assert list(status["critical"]) == ["stream_rolled_back"]
            assert (await http.get("/readyz")).status_code == 503


async def test_a_stream_rewritten_in_the_middle_with_the_same_length_and_last_event_is_critical(
    writer: Writer,
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    operator_headers: dict[str, str],
) -> None:
    """Same first event, same last event, same length: only a consistency proof from the signed tree to the tree
    rebuilt from the whole stream shows that one event in the middle is another one."""
    settings = load_settings(env=audit_env(nats_url, database_url, keys_dir, SYMBI_AUDIT__GUARD_INTERVAL_S="3600"))
    js = provisioned.jetstream()
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit", headers=operator_headers) as http:
            service = app.state.audit
            guard = app.state.audit_guard
            last = await writer.mixed(20)
            await _signed_through(service, last)
            assert await guard.check() == {}
            stored = await read_log(provisioned)
            assert [m.sequence for m in stored] == list(range(1, last + 1))

            # An admin re-creates the stream with the same events, but for one in the middle: it carries the
            # stored bytes of another event of the same aggregate (a validly signed event, moved).
            middle = len(stored) // 2
            same_subject = next(m for m in stored[middle + 1 :] if m.subject == stored[middle].subject)
            await js.delete_stream(EVENTS_STREAM)
            await provision_streams(js)
            for i, m in enumerate(stored):
                data = same_subject.data if i == middle else m.data
                ack = await js.publish(m.subject, data)
                assert ack.seq == m.sequence
            assert (await js.stream_info(EVENTS_STREAM)).state.last_seq == last

            problems = await guard.check()
            assert list(problems) == ["stream_rolled_back"]
            assert "consistency proof" in problems["stream_rolled_back"]
            await _critical_everywhere(http, "stream_rolled_back")


async def test_the_guard_reads_only_new_events_until_the_stream_changes(
    writer: Writer,
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    operator_headers: dict[str, str],
) -> None:
    """A check extends the tree rebuilt so far with the events signed since; another incarnation of the
    stream makes it read from the first event again."""
    env = audit_env(nats_url, database_url, keys_dir, SYMBI_AUDIT__GUARD_INTERVAL_S="3600")
    settings = load_settings(env={**env, "SYMBI_AUDIT__CHECKPOINT_EVERY": "5"})
    js = provisioned.jetstream()
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        service = app.state.audit
        guard = app.state.audit_guard

        size = await _signed_through(service, await writer.mixed(10))
        assert await guard.check() == {}
        first = guard.rebuilt
        assert first is not None
        assert (first.tree.size, first.sequence) == (
            size,
            (await service.store.checkpoint()).last_sequence,
        )

        last = await writer.mixed(10)
        size = await _signed_through(service, last)
        assert await guard.check() == {}
        assert guard.rebuilt is first  # extended, not rebuilt: only the new events were read
        assert (first.tree.size, first.sequence) == (size, last)
        assert first.tree.root() == (await service.store.checkpoint()).root

        # The stream allows no message deletes or purges: changing it means re-creating it. Re-created with the
        # very same events, it is intact, and read from its first event again (another incarnation).
        stored = await read_log(provisioned)
        await js.delete_stream(EVENTS_STREAM)
        await provision_streams(js)
        for m in stored:
            assert (await js.publish(m.subject, m.data)).seq == m.sequence
        assert await guard.check() == {}
        assert guard.rebuilt is not None
        assert guard.rebuilt is not first
        assert (guard.rebuilt.tree.size, guard.rebuilt.sequence) == (size, last)


async def test_the_guard_reads_everything_again_after_its_full_interval(
    writer: Writer,
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    operator_headers: dict[str, str],
) -> None:
    env = audit_env(nats_url, database_url, keys_dir, SYMBI_AUDIT__GUARD_INTERVAL_S="3600")
    settings = load_settings(env={**env, "SYMBI_AUDIT__GUARD_FULL_INTERVAL_S": "0.01"})
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        service = app.state.audit
        guard = app.state.audit_guard
        last = await writer.mixed(10)
        await _signed_through(service, last)
        assert await guard.check() == {}
        before = guard.rebuilt
        await asyncio.sleep(0.02)
        assert await guard.check() == {}
        assert guard.rebuilt is not before
        assert guard.rebuilt is not None
        assert guard.rebuilt.sequence == last
