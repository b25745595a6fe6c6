"""The service base against real NATS and PostgreSQL: lifespan, health endpoints, typed HTTP errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import APIRouter
from symbi_common import service
from symbi_common.errors import IllegalTransition, InfrastructureError, KeyringError, RegistrySignatureInvalid
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app
from symbi_common.settings import Settings, load_settings


def _settings(nats_url: str, database_url: str, keys_dir: Path) -> Settings:
    return load_settings(
        env={
            "SYMBI_NATS_URL": nats_url,
            "SYMBI_DATABASE_URL": database_url,
            "SYMBI_KEYS_DIR": str(keys_dir),
            "SYMBI_POLICY__ENFORCEMENT": "allow-all",  # no policy service here; operator tokens are still checked
        }
    )


async def test_lifespan_health_metrics_and_errors(
    nats_url: str, database_url: str, keys_dir: Path, operator_headers: dict[str, str]
) -> None:
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    router = APIRouter()

    @router.get("/v1/boom")
    async def boom() -> None:
        raise IllegalTransition(state="Ready", command="resume", allowed=["assign_task"])

    started: list[bool] = []

    async def on_start(rt: ServiceRuntime) -> None:
        started.append(rt.started)

    app = create_app(runtime, title="test", routers=[router], on_start=on_start)
    async with app.router.lifespan_context(app):
        assert started == [True]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            health = await http.get("/healthz")
            assert health.status_code == 200
            assert health.json()["service"] == "lifecycle"
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "started": True,
                "nats": True,
                "database": True,
                "operator_revocations": True,
            }
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "symbi_commands_total" in metrics.text
            assert (await http.get("/v1/boom")).status_code == 401  # no operator token
            err = await http.get("/v1/boom", headers=operator_headers)
            assert err.status_code == 409
            assert err.json()["error"]["code"] == "illegal_transition"
            assert err.json()["error"]["details"] == {"state": "Ready", "command": "resume"}
        # Streams were provisioned by the runtime.
        info = await runtime.js.stream_info("EVENTS")
        assert info.config.deny_delete
        assert info.config.deny_purge
    assert runtime.started is False
    await runtime.stop()  # idempotent


async def test_closers_run_after_the_background_tasks_have_ended(
    nats_url: str, database_url: str, keys_dir: Path
) -> None:
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    await runtime.start()
    steps: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # cancelled on stop: its last write still needs what the closer closes
            await asyncio.sleep(0.2)
            steps.append("worker ended")

    async def close(name: str) -> None:
        steps.append(f"closed {name}")

    runtime.spawn(worker(), "test:worker")
    runtime.close_on_stop(lambda: close("first"))
    runtime.close_on_stop(lambda: close("second"))
    await asyncio.sleep(0)  # the worker starts
    await runtime.stop()
    assert steps == ["worker ended", "closed second", "closed first"]


async def test_a_stop_step_that_hangs_is_left_behind_and_the_pool_still_closes(
    nats_url: str, database_url: str, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closer that never returns and a pool connection a stuck task never releases: the stop still ends, runs
    the other closers, and terminates the pool instead of waiting for the connection forever."""
    monkeypatch.setattr(service, "STOP_STEP_TIMEOUT_S", 0.5)
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    await runtime.start()
    pool = runtime.pool
    assert pool is not None
    held = await pool.acquire()  # never released: pool.close() alone would wait for it for good
    steps: list[str] = []

    async def close(name: str) -> None:
        steps.append(f"closed {name}")

    runtime.close_on_stop(lambda: close("first"))
    runtime.close_on_stop(asyncio.Event().wait)  # hangs
    await asyncio.wait_for(runtime.stop(), 10)
    assert steps == ["closed first"]
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):  # taken from the stuck holder, not left open behind it
        await held.fetchval("SELECT 1")


async def test_readyz_reports_a_dead_database(nats_url: str, database_url: str, keys_dir: Path) -> None:
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    app = create_app(runtime, title="test")
    async with app.router.lifespan_context(app):
        assert runtime.pool is not None
        await runtime.pool.close()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] is False


async def test_a_service_refuses_to_start_without_its_key(nats_url: str, database_url: str, keys_dir: Path) -> None:
    (keys_dir / "lifecycle" / "wrap.key").unlink()
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    with pytest.raises(KeyringError, match=r"wrap\.key does not exist"):
        await runtime.start()


async def test_a_service_refuses_a_key_the_registry_does_not_list_as_its_own(
    nats_url: str, database_url: str, keys_dir: Path
) -> None:
    # Another service's key in its place: refused before it touches anything.
    (keys_dir / "lifecycle" / "signing.key").write_bytes((keys_dir / "policy" / "signing.key").read_bytes())
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    with pytest.raises(KeyringError, match="is not the active key of lifecycle"):
        await runtime.start()


async def test_a_service_refuses_to_start_without_its_streams(nats_url: str, database_url: str, keys_dir: Path) -> None:
    import nats as nats_client

    nc = await nats_client.connect(nats_url)
    try:
        await nc.jetstream().delete_stream("SNAPSHOTS")
    finally:
        await nc.drain()
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    with pytest.raises(InfrastructureError, match="stream SNAPSHOTS does not exist"):
        await runtime.start()
    await runtime.stop()


async def test_a_service_refuses_a_registry_not_signed_by_the_pinned_root(
    nats_url: str, database_url: str, keys_dir: Path
) -> None:
    registry = keys_dir / "lifecycle" / "registry.json"
    registry.write_bytes(registry.read_bytes().replace(b'"evt.agent.>"', b'"evt.>"'))
    runtime = ServiceRuntime("lifecycle", _settings(nats_url, database_url, keys_dir))
    with pytest.raises(RegistrySignatureInvalid):
        await runtime.start()
