"""The local runtime as ``symbi up`` runs it: real nats-server, PostgreSQL and lifecycle processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from symbi_cli.errors import StartError
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import ALL_SERVICES, RuntimeOptions, check_installed, sandbox_host_id
from symbi_cli.supervisor import EventKind, RestartPolicy
from symbi_common.nats_client import server_options


async def _readyz(url: str) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(f"{url}/readyz")).status_code


async def test_runtime_restarts_a_killed_service_and_stops_everything(
    runtime_home: Path, free_base_port: int, alive: Callable[[int], bool], mentioning: Callable[[str], list[int]]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    env["SYMBI_LOG_LEVEL"] = "warning"
    options = RuntimeOptions(
        home=runtime_home,
        services=["lifecycle"],
        base_port=free_base_port,
        nats_port=None,
        grace_period=5.0,
        restart=RestartPolicy(initial_backoff=0.1),
        env=env,
    )
    rt = LocalRuntime(options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=30)
        assert rt.supervisor is not None
        url = rt.url_of("lifecycle")
        assert await _readyz(url) == 200
        state = json.loads(rt.state_file.read_text())
        first = state["services"]["lifecycle"]["pid"]
        assert state["services"]["lifecycle"]["restarts"] == 0
        assert "last_exit" not in state["services"]["lifecycle"]
        nats_pid = state["nats"]["pid"]
        pg_pid = state["postgres"]["pid"]
        assert all(alive(p) for p in (first, nats_pid, pg_pid))

        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (rt.supervisor.status("lifecycle").starts == 2 and rt.supervisor.status("lifecycle").ready):
            assert time.monotonic() < deadline, rt.supervisor.tail("lifecycle")
            await asyncio.sleep(0.05)
        second = rt.supervisor.status("lifecycle").pid
        assert second is not None
        assert second != first
        assert not alive(first)
        assert await _readyz(url) == 200
        recorded = json.loads(rt.state_file.read_text())["services"]["lifecycle"]
        assert recorded["pid"] == second
        assert (recorded["restarts"], recorded["last_exit"]) == (1, "signal SIGKILL")
    finally:
        await rt.stop()

    assert not alive(second)
    assert not alive(nats_pid)
    assert not alive(pg_pid)
    assert mentioning(str(runtime_home)) == []
    assert not rt.state_file.exists()


def test_each_runtime_home_gets_its_own_sandbox_host_id(tmp_path: Path) -> None:
    """A sandbox-agent removes every container of its host id at start-up: two homes must not share one."""
    first = sandbox_host_id(tmp_path / "a", {})
    assert first is not None
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", first)
    assert sandbox_host_id(tmp_path / "a", {}) == first  # stable: a restarted runtime finds its own leftovers
    assert sandbox_host_id(tmp_path / "b", {}) != first
    # A host id given in the environment or the config file is left alone.
    assert sandbox_host_id(tmp_path / "a", {"SYMBI_SANDBOX__HOST_ID": "edge-1"}) is None
    config = tmp_path / "symbi.toml"
    config.write_text('[sandbox]\nhost_id = "edge-2"\n')
    assert sandbox_host_id(tmp_path / "a", {"SYMBI_CONFIG_PATH": str(config)}) is None


def test_a_service_whose_package_is_missing_stops_the_start_instead_of_being_skipped() -> None:
    check_installed(ALL_SERVICES)  # every service of the runtime is installed in this workspace
    with pytest.raises(StartError, match=r"absent not installed \(no symbi_absent\)"):
        check_installed(["lifecycle", "absent"])


async def test_the_runtime_provisions_the_configured_stream_limits_and_refuses_replicas(
    runtime_home: Path, free_base_port: int
) -> None:
    """``[nats] events_max_bytes`` is honoured by ``symbi up`` (not only by ``symbi nats provision``), and replicas,
    which its single nats-server cannot place, are refused at start-up instead of waiting for absent members."""
    import nats

    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    env["SYMBI_NATS__EVENTS_MAX_BYTES"] = str(2 * 1024**3)
    env["SYMBI_NATS__DUPLICATE_WINDOW_S"] = "120"
    options = RuntimeOptions(home=runtime_home, services=[], base_port=free_base_port, nats_port=None, env=env)
    rt = LocalRuntime(options)
    try:
        await rt.start()
        nc = await nats.connect(**server_options(rt.nats_url_for("admin")), allow_reconnect=False)
        try:
            config = (await nc.jetstream().stream_info("EVENTS")).config
        finally:
            await nc.drain()
    finally:
        await rt.stop()
    assert (config.max_bytes, config.duplicate_window) == (2 * 1024**3, 120.0)

    env["SYMBI_NATS__REPLICAS"] = "3"
    with pytest.raises(StartError, match=r"replicas = 3, but symbi up runs one nats-server"):
        await LocalRuntime(RuntimeOptions(home=runtime_home, services=[], nats_port=None, env=env)).start()


class Collected:
    """The runtime's report, in order: ``step: …`` lines and ``<service>: <event>`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, message: str) -> None:
        self.lines.append(f"step: {message}")

    def output(self, service: str, line: str) -> None:
        pass

    def event(self, service: str, message: str, kind: EventKind) -> None:
        self.lines.append(f"{service}: {message}")

    def index(self, prefix: str) -> int:
        found = [i for i, line in enumerate(self.lines) if line.startswith(prefix)]
        assert found, f"no {prefix!r} in {self.lines}"
        return found[0]


async def test_services_without_a_database_start_before_postgresql_and_a_failed_database_stops_them(
    runtime_home: Path, free_base_port: int, alive: Callable[[int], bool], mentioning: Callable[[str], list[int]]
) -> None:
    """Policy keeps no database: it boots while PostgreSQL starts. When the database then fails (here a
    ``SYMBI_DATABASE_URL`` nothing answers on), the start fails and stops what did start."""
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    env["SYMBI_LOG_LEVEL"] = "warning"
    env["SYMBI_DATABASE_URL"] = f"postgresql://nobody:secret@127.0.0.1:{free_base_port + 9}/nothing"
    options = RuntimeOptions(
        home=runtime_home, services=["policy", "lifecycle"], base_port=free_base_port, nats_port=None, env=env
    )
    report = Collected()
    rt = LocalRuntime(options, report)
    with pytest.raises(StartError, match="the runtime did not start"):
        await rt.start()
    policy_started = report.index("policy: started (pid ")
    assert policy_started < report.index("step: PostgreSQL from SYMBI_DATABASE_URL"), report.lines
    assert report.index("policy: stopped") > policy_started
    assert not any(line.startswith("lifecycle:") for line in report.lines), report.lines
    policy_pid = int(report.lines[policy_started].split("pid ")[1].rstrip(")"))
    assert not alive(policy_pid)
    assert mentioning(str(runtime_home)) == []
    assert not rt.state_file.exists()
