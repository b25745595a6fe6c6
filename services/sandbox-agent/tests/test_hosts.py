"""Several daemons on one machine, and crash recovery: kill -9 mid-run, restart, nothing left unaccounted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import msgspec
import nats
import pytest
from symbi_cli.infra import NatsServer, provision_nats_async
from symbi_common.eventstore import EventStore
from symbi_common.settings import Settings, load_settings
from symbi_contracts.sandbox_agent.errors import DockerUnavailable
from symbi_contracts.sandbox_agent.events import (
    HOST_CODEC,
    ExecutionExited,
    ExecutionFailed,
    ExecutionKilled,
    ExecutionOutput,
    ExecutionStarted,
    HostReconciled,
)
from symbi_fixtures.runtimes import take_free_port
from symbi_sandbox_agent.main import build_app

from .conftest import IMAGE, Scheduler, agent_env, containers_of, running_agent


async def test_two_daemons_each_run_only_their_hosts_work(
    docker_client: Any, agent_settings: Callable[..., Settings], scheduler: Scheduler
) -> None:
    hosts = ["alpha-" + os.urandom(3).hex(), "beta-" + os.urandom(3).hex()]
    async with running_agent(agent_settings(hosts[0])) as a, running_agent(agent_settings(hosts[1])) as b:
        assert (a.host_id, b.host_id) == tuple(hosts)
        tasks = {
            await scheduler.submit(host, ["sh", "-c", f"echo {host}"], tier=tier): host
            for host in hosts
            for tier in ("tier1", "tier2")
        }
        for task_id, host in tasks.items():
            r = await scheduler.result(task_id)
            [started] = r.of(ExecutionStarted)
            assert started.host_id == host
            assert started.container.startswith(f"symbi-{host}-")
            assert r.stdout == f"{host}\n".encode()
        kv = await scheduler.nc.jetstream().key_value("HOSTS")
        assert {msgspec.json.decode((await kv.get(h)).value)["host_id"] for h in hosts} == set(hosts)
    for host in hosts:
        assert containers_of(docker_client, host) == []


async def test_shutdown_kills_removes_and_reports_running_sandboxes(
    docker_client: Any, agent_settings: Callable[..., Settings], scheduler: Scheduler, host_id: str
) -> None:
    async with running_agent(agent_settings()):
        task_id = await scheduler.submit(host_id, ["sh", "-c", "echo up; sleep 60"], tier="tier2")
        await scheduler.wait_for(task_id, lambda ev: any(isinstance(e, ExecutionOutput) for e in ev))
    r = await scheduler.result(task_id, timeout=5)
    assert isinstance(r.terminal, ExecutionKilled)
    assert r.terminal.reason.startswith("shutdown")
    assert r.stdout == b"up\n"
    assert containers_of(docker_client, host_id) == []


def shim_pids(container_id: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if container_id.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def leave_a_runsc_shim_behind(client: docker.DockerClient, host_id: str) -> str:
    """Reproduce a gVisor sandbox removed while frozen: Docker forgets it, its containerd shim lives on."""
    api = client.api
    cid = api.create_container(
        IMAGE,
        ["sleep", "60"],
        labels={"symbi.host_id": host_id, "symbi.task_id": "leftover"},
        host_config=api.create_host_config(pids_limit=128, runtime="runsc"),
        runtime="runsc",
    )["Id"]
    api.start(cid)
    api.pause(cid)
    with contextlib.suppress(docker.errors.APIError):
        api.remove_container(cid, force=True)  # refused: "PID … is zombie and can not be killed"
    deadline = time.monotonic() + 20
    try:
        while api.inspect_container(cid)["State"]["Running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        api.remove_container(cid, force=True)
    except docker.errors.NotFound:
        pass  # Docker finished the removal by itself
    return str(cid)


async def test_start_up_removes_its_containers_and_leftover_runtime_processes(
    docker_client: Any, agent_settings: Callable[..., Settings], scheduler: Scheduler, host_id: str
) -> None:
    gone = await asyncio.to_thread(leave_a_runsc_shim_behind, docker_client, host_id)
    leftover = shim_pids(gone)
    assert leftover, "the reproduction left no shim behind; nothing to clean up"
    stray = docker_client.api.create_container(IMAGE, ["sleep", "60"], labels={"symbi.host_id": host_id})["Id"]
    stray_name = docker_client.api.inspect_container(stray)["Name"].lstrip("/")
    async with running_agent(agent_settings()) as agent:
        reconciled = agent.daemon.reconciled
        assert reconciled is not None
        assert set(leftover) <= set(reconciled.killed_processes)
        assert reconciled.removed_containers == (stray_name,)
        assert shim_pids(gone) == []
        assert containers_of(docker_client, host_id) == []
        events = [r.event for r in await scheduler.auditor.load("host", host_id, HOST_CODEC)]
        assert isinstance(events[0], HostReconciled)
        assert set(leftover) <= set(events[0].killed_processes)


def tail(log: Path) -> str:
    return log.read_text()[-2000:]


@contextmanager
def daemon_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "symbi_sandbox_agent"],
            env={**os.environ, **env, "SYMBI_HTTP_PORT": str(take_free_port())},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_registered(scheduler: Scheduler, host_id: str, after: float, proc: Any, log: Path) -> None:
    kv = await scheduler.nc.jetstream().key_value("HOSTS") if after else None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the daemon exited: {tail(log)}"
        try:
            kv = kv or await scheduler.nc.jetstream().key_value("HOSTS")
            entry = msgspec.json.decode((await kv.get(host_id)).value)
            if entry["heartbeat_at"] > after:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"daemon {host_id} did not register: {tail(log)}")


async def test_kill_9_mid_run_then_restart_leaves_every_task_defined_and_nothing_orphaned(
    docker_client: Any, nats_url: str, keys_dir: Path, tmp_path: Path, scheduler: Scheduler, host_id: str
) -> None:
    env = agent_env(nats_url, keys_dir, host_id, tmp_path / "work")
    log = tmp_path / "daemon.log"
    with daemon_process(env, log) as first:
        await wait_registered(scheduler, host_id, 0.0, first, log)
        running = await scheduler.submit(host_id, ["sh", "-c", "echo begun; sleep 60"], tier="tier2")
        vanishing = await scheduler.submit(host_id, ["sh", "-c", "echo begun; sleep 60"], tier="tier1")
        for task_id in (running, vanishing):
            await scheduler.wait_for(task_id, lambda ev: any(isinstance(e, ExecutionOutput) for e in ev))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    orphans = {c["Labels"]["symbi.task_id"]: c["Id"] for c in containers_of(docker_client, host_id)}
    assert set(orphans) == {running, vanishing}  # still running, owned by nobody
    docker_client.api.remove_container(orphans[vanishing], force=True)  # this one vanishes while we are down
    queued = await scheduler.submit(host_id, ["echo", "after the crash"])  # waits in the WORK stream
    restarted_at = time.time()
    with daemon_process(env, log) as second:
        await wait_registered(scheduler, host_id, restarted_at, second, log)
        r1, r2, r3 = [await scheduler.result(t) for t in (running, vanishing, queued)]
        assert isinstance(r1.terminal, ExecutionFailed)
        assert "restarted while the task ran" in r1.terminal.reason
        assert isinstance(r2.terminal, ExecutionFailed)
        assert "vanished" in r2.terminal.reason
        assert isinstance(r3.terminal, ExecutionExited)
        assert r3.stdout == b"after the crash\n"
        assert containers_of(docker_client, host_id) == []
        reconciled = [r.event for r in await scheduler.auditor.load("host", host_id, HOST_CODEC)][-2]
        assert isinstance(reconciled, HostReconciled)
        assert set(reconciled.failed_tasks) == {running, vanishing}
        assert len(reconciled.removed_containers) == 1
        assert running in reconciled.removed_containers[0]
    # A clean stop: uvicorn re-raises the SIGTERM it handled, after the lifespan shut down.
    assert second.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert "Traceback" not in log.read_text().split("restarted")[-1]
    assert containers_of(docker_client, host_id) == []


async def test_a_run_rides_out_a_nats_server_restart(
    docker_client: Any, keys_dir: Path, tmp_path: Path, signer_for: Any, registry: Any, datakeys_for: Any
) -> None:
    """Output and the terminal event produced while NATS is down are stored once it is back."""
    port = take_free_port()
    server = NatsServer(tmp_path / "nats", port=port, log_file=tmp_path / "nats.log").start()
    await provision_nats_async(server.url)
    host = "nats-" + os.urandom(3).hex()
    env = agent_env(server.url, keys_dir, host, tmp_path / "work")
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        store = EventStore(
            nc,
            signer=signer_for("scheduler"),
            producer="scheduler",
            registry=registry,
            datakeys=await datakeys_for(nc, "scheduler"),
        )
        scheduler = Scheduler(store, nc)
        async with running_agent(load_settings(env=env)):
            task_id = await scheduler.submit(host, ["sh", "-c", "echo begun; sleep 2; echo ended"])
            await scheduler.wait_for(task_id, lambda ev: any(isinstance(e, ExecutionOutput) for e in ev))
            server.stop()
            await asyncio.sleep(3)  # the task prints and exits while NATS is down
            server = NatsServer(tmp_path / "nats", port=port, log_file=tmp_path / "nats2.log").start()
            r = await scheduler.result(task_id, timeout=60)
            assert isinstance(r.terminal, ExecutionExited), r.terminal
            assert r.stdout == b"begun\nended\n"
            assert containers_of(docker_client, host) == []
    finally:
        await nc.close()
        server.stop()


async def test_without_docker_the_daemon_refuses_to_start(agent_settings: Callable[..., Settings]) -> None:
    app = build_app(agent_settings(**{"SYMBI_SANDBOX__DOCKER_URL": "unix:///nonexistent/docker.sock"}))
    with pytest.raises(DockerUnavailable, match=r"deploy/host/setup-docker\.sh"):
        async with app.router.lifespan_context(app):
            pass
