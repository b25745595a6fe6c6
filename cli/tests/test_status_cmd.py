"""``symbi status`` against a real local runtime (nats-server, PostgreSQL, policy, lifecycle, scheduler, audit)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from symbi_cli.credentials import auth_headers
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_cli.status_probes import HttpAnswer, ProcessInfo, ServiceProbe, Snapshot, read_process
from symbi_cli.status_report import build_report
from symbi_cli.supervisor import RestartPolicy

HELLO = Path(__file__).resolve().parents[2] / "examples" / "agents" / "hello.json"


async def symbi_status(symbi_exe: str, env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the real ``symbi status`` as its own process (this event loop keeps supervising meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        symbi_exe, "status", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["components"]}


async def test_status_reports_components_agents_and_a_killed_service(
    runtime_home: Path, free_base_port: int, symbi_exe: str, cli_env: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SYMBI_DATABASE_URL"}
    env["SYMBI_LOG_LEVEL"] = "warning"
    options = RuntimeOptions(
        home=runtime_home,
        services=["policy", "lifecycle", "scheduler", "audit"],
        base_port=free_base_port,
        nats_port=None,
        grace_period=5.0,
        # A killed service stays down for the rest of the test instead of being restarted at once.
        restart=RestartPolicy(initial_backoff=120.0, max_backoff=120.0),
        env=env,
    )
    rt = LocalRuntime(options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)

        code, out = await symbi_status(symbi_exe, cli_env, "--home", str(runtime_home), "--json")
        report = json.loads(out)
        assert code == 0, report["problems"]
        assert report["status"] == "ok"
        assert report["problems"] == []
        components = by_name(report)
        assert {"supervisor", "nats-server", "postgresql", "policy", "lifecycle", "scheduler"} <= set(components)
        for name in ("policy", "lifecycle", "scheduler", "audit"):
            assert components[name]["status"] == "ok"
            assert components[name]["checks"]["nats"] is True
            assert components[name]["rss_mb"] > 10
            assert components[name]["cpu_s"] > 0
        assert components["nats-server"]["alive"] is True
        assert components["postgresql"]["alive"] is True
        assert components["lifecycle"]["checks"]["database"] is True
        assert report["scheduler"]["queues"] is not None
        assert report["scheduler"]["hosts"] == []
        assert report["agents"] == {"total": 0, "by_state": {}, "truncated": False}
        assert report["audit"]["findings"] == 0
        assert isinstance(report["audit"]["sequence"], int)

        # Without a state file the services are found at their ports; the ones not answering are left out.
        code, out = await symbi_status(
            symbi_exe, cli_env, "--home", str(runtime_home / "elsewhere"), "--base-port", str(free_base_port), "--json"
        )
        report = json.loads(out)
        assert code == 0, report["problems"]
        assert [c["name"] for c in report["components"]] == ["policy", "lifecycle", "scheduler", "audit"]
        assert set(report["skipped"]) == {"sandbox-agent", "context"}

        async with httpx.AsyncClient(
            base_url=rt.url_of("lifecycle"), timeout=30, headers=auth_headers(rt.home)
        ) as http:
            r = await http.post(
                "/v1/agents", json={"agent_id": "status-hello", "config": json.loads(HELLO.read_text())}
            )
            assert r.status_code == 201, r.text
            registered_state = r.json()["state"]
            # The list is a projection: wait until it shows the agent.
            deadline = time.monotonic() + 15
            while not (await http.get("/v1/agents")).json()["items"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        code, out = await symbi_status(symbi_exe, cli_env, "--home", str(runtime_home), "--json")
        assert json.loads(out)["agents"] == {"total": 1, "by_state": {registered_state: 1}, "truncated": False}

        killed = json.loads(rt.state_file.read_text())["services"]["scheduler"]["pid"]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while read_process(killed).alive:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        code, out = await symbi_status(symbi_exe, cli_env, "--home", str(runtime_home), "--json")
        report = json.loads(out)
        assert code == 1
        assert report["status"] == "degraded"
        assert by_name(report)["scheduler"]["status"] == "down"
        assert [p.split(":")[0] for p in report["problems"]] == ["scheduler"]
        assert by_name(report)["lifecycle"]["status"] == "ok"
        assert report["scheduler"] is None  # nothing answered to ask for queues

        code, text = await symbi_status(symbi_exe, cli_env, "--home", str(runtime_home))
        assert code == 1
        assert "degraded" in text
        assert "scheduler" in text
    finally:
        await rt.stop()


def _probe(ready: int | None, *, alive: bool = True) -> ServiceProbe:
    body = {"ok": ready == 200, "checks": {"nats": True, "database": ready == 200}, "recent_errors": ["12:00:00 boom"]}
    return ServiceProbe(
        url="http://127.0.0.1:1",
        process=ProcessInfo(pid=42, alive=alive, rss_bytes=2**20, cpu_seconds=1.5),
        readyz=HttpAnswer(status=ready, body=body) if ready else HttpAnswer(error="refused"),
    )


def test_report_is_down_when_no_service_answers_and_names_what_failed() -> None:
    snapshot = Snapshot(
        home="/h",
        state_file=True,
        supervisor=ProcessInfo(pid=1, alive=True),
        nats=ProcessInfo(pid=2, alive=False),
        postgres_external=True,
        services={"lifecycle": _probe(None, alive=False), "policy": _probe(None)},
    )
    report = build_report(snapshot)
    assert report["status"] == "down"
    assert report["problems"] == [
        "nats-server: pid 2 is not running",
        "lifecycle: pid 42 is not running",
        "policy: not answering: refused",
    ]
    assert by_name(report)["postgresql"]["status"] == "ok"


def test_report_is_degraded_by_a_failing_check_and_shows_recent_errors() -> None:
    snapshot = Snapshot(home="/h", state_file=False, services={"lifecycle": _probe(503), "policy": _probe(200)})
    report = build_report(snapshot)
    assert report["status"] == "degraded"
    assert report["problems"] == ["lifecycle: not ready: database"]
    lifecycle = by_name(report)["lifecycle"]
    assert lifecycle["recent_errors"] == ["12:00:00 boom"]
    assert (lifecycle["rss_mb"], lifecycle["cpu_s"]) == (1.0, 1.5)
    assert build_report(Snapshot(home="/h", state_file=False, services={"policy": _probe(200)}))["status"] == "ok"


def test_report_says_a_service_was_restarted_and_how_its_last_process_ended() -> None:
    restarted = _probe(200)
    restarted.restarts, restarted.last_exit = 2, "signal SIGKILL"
    report = build_report(Snapshot(home="/h", state_file=True, services={"scheduler": restarted}))
    scheduler = by_name(report)["scheduler"]
    assert scheduler["status"] == "ok"  # restarted and ready again: healthy, but the operator is told
    assert (scheduler["restarts"], scheduler["last_exit"]) == (2, "signal SIGKILL")
    assert scheduler["detail"] == "ready; restarted 2x (last: signal SIGKILL)"
    never = by_name(build_report(Snapshot(home="/h", state_file=True, services={"policy": _probe(200)})))["policy"]
    assert never["detail"] == "ready"
