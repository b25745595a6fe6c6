"""``symbi task run`` and ``symbi task logs`` against a real scheduler (served over HTTP by uvicorn), the real
lifecycle service, a real nats-server, and a sandbox host played with real events."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from symbi_cli.main import app
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import load_settings
from symbi_fixtures.runtimes import take_free_port
from symbi_lifecycle.main import build_app as build_lifecycle
from symbi_scheduler.main import build_app as build_scheduler
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "scheduler" / "tests"))

from schedkit import FakeHost, scheduler_env


@contextlib.asynccontextmanager
async def serve(asgi: Any, port: int) -> AsyncIterator[str]:
    """Run ``asgi`` (lifespan and all) on a real port in this event loop."""
    # Bounded like the services' own server (service_app.serve): a request still open at shutdown is cancelled.
    config = uvicorn.Config(
        asgi, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def runtime(
    nats_url: str, database_url: str, keys_dir: Path, make_store: Any, nats_connect: Any
) -> AsyncIterator[tuple[str, Callable[..., Any]]]:
    """Lifecycle (in-process) with agent ``upper`` registered, a scheduler on a real port, and host h1."""
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_DATABASE_URL": database_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    lifecycle = build_lifecycle(load_settings(env=env))
    hosts: list[FakeHost] = []
    async with lifecycle.router.lifespan_context(lifecycle):
        transport = httpx.ASGITransport(app=lifecycle)
        TOKEN["token"] = issue_local_token(keys_dir)
        headers = bearer_header(TOKEN["token"])
        async with httpx.AsyncClient(transport=transport, base_url="http://lifecycle", headers=headers) as http:
            config = {"name": "upper", "workload": {"image": "symbi/busybox:1", "command": ["tr", "a-z", "A-Z"]}}
            r = await http.post("/v1/agents", json={"agent_id": "upper", "config": config})
            assert r.status_code == 201, r.text
            # The fake hosts heartbeat from this event loop while the CLI runs in a thread of the same process:
            # on a loaded machine the loop can stall past the kit's 2 s, and the scheduler would take a host as
            # lost and requeue its task. No test here is about a lost host.
            settings = load_settings(env=scheduler_env(nats_url, keys_dir, host_lost_after_s="30"))
            async with serve(build_scheduler(settings), take_free_port()) as url:

                async def add_host(**options: Any) -> FakeHost:
                    nc = await nats_connect()
                    host = FakeHost("h1", nc, await make_store("sandbox-agent", nc=nc), **options)
                    await host.start(settings)
                    hosts.append(host)
                    return host

                yield url, add_host
                for host in hosts:
                    await host.stop()


#: The operator token the commands send (from the test's keyring); set where the services start.
TOKEN: dict[str, str] = {}


def invoke(*args: str) -> Any:
    env = {"SYMBI_OPERATOR_TOKEN": TOKEN.get("token", "unused-for-an-unreachable-scheduler"), "SYMBI_HOME": None}
    return CliRunner(env=env).invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "sent",
    [
        {},  # the result in the terminal event's tail, as the sandbox-agent sends a short one
        {"chunk": 4},  # streamed as execution.output chunks, the rest in the tail
        {"chunk": 4, "tail": False},  # as the previous version sent it: no tail
    ],
)
async def test_run_prints_the_result_and_follows_progress(runtime: Any, nats_url: str, sent: dict[str, Any]) -> None:
    url, add_host = runtime
    await add_host(delay=0.5, **sent)
    result = await asyncio.to_thread(invoke, "task", "run", "upper", "hello world", "--url", url, "--nats", nats_url)
    assert result.exit_code == 0, result.output
    assert result.stdout == "HELLO WORLD"
    assert "succeeded on h1" in result.stderr


async def test_run_exits_with_the_workloads_exit_code(runtime: Any, nats_url: str) -> None:
    url, add_host = runtime
    host: FakeHost = await add_host(hold=True)
    run = asyncio.create_task(
        asyncio.to_thread(invoke, "task", "run", "upper", "x", "--task-id", "t-fail", "--url", url, "--nats", nats_url)
    )
    await host.wait_running("t-fail")
    await host.finish("t-fail", exit_code=3)
    result = await run
    assert result.exit_code == 3
    assert "failed" in result.stderr


@pytest.mark.parametrize("sent", [{}, {"chunk": 2, "tail": False}])
async def test_logs_follow_output_live(runtime: Any, nats_url: str, sent: dict[str, Any]) -> None:
    url, add_host = runtime
    host: FakeHost = await add_host(hold=True, **sent)
    submitted = await asyncio.to_thread(
        invoke, "task", "run", "upper", "abc", "--detach", "--task-id", "t-logs", "--url", url
    )
    assert submitted.stdout.strip() == "t-logs"
    await host.wait_running("t-logs")
    follow = asyncio.create_task(
        asyncio.to_thread(
            invoke, "task", "logs", "t-logs", "--stream", "stdout", "-f", "--url", url, "--nats", nats_url
        )
    )
    await asyncio.sleep(1.0)
    assert not follow.done()  # still following: the task has not ended
    await host.finish("t-logs")
    result = await asyncio.wait_for(follow, 20)
    assert result.exit_code == 0
    assert result.stdout == "ABC"


def test_unreachable_scheduler_is_a_clear_error() -> None:
    result = invoke("task", "run", "upper", "x", "--url", f"http://127.0.0.1:{take_free_port()}")
    assert result.exit_code == 2
    assert "cannot reach the scheduler" in result.stderr


async def test_unknown_agent_is_reported(runtime: Any) -> None:
    url, _ = runtime
    result = await asyncio.to_thread(invoke, "task", "run", "nobody", "x", "--url", url)
    assert result.exit_code == 2
    assert "not registered" in result.stderr
