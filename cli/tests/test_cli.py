"""``symbi up`` and ``symbi demo`` as a user runs them: the real command in a subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx


class Running:
    """A ``symbi`` subprocess whose output is collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._reader = asyncio.get_running_loop().create_task(self._read(proc.stdout))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.returncode is None, f"symbi exited with {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output}"
            await asyncio.sleep(0.05)

    async def wait(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return code


async def start(exe: str, *args: str, env: dict[str, str], cwd: Path) -> Running:
    proc = await asyncio.create_subprocess_exec(
        exe, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd
    )
    return Running(proc)


async def test_up_recovers_after_the_supervisor_was_killed_restarts_a_killed_service_and_sigint_stops_everything(
    tmp_path: Path,
    runtime_home: Path,
    free_base_port: int,
    symbi_exe: str,
    cli_env: dict[str, str],
    alive: Callable[[int], bool],
    mentioning: Callable[[str], list[int]],
) -> None:
    """One home, two runs of ``symbi up`` (each start of a whole runtime costs seconds, so the checks share them):
    the first one's supervisor is killed; the second cleans up after it, refuses a third, restarts a killed
    service and stops everything on SIGINT."""
    home = runtime_home
    args = ["up", "--home", str(home), "--base-port", str(free_base_port), "--nats-port", "0", "--grace-period", "5"]
    crashed = await start(symbi_exe, *args, env=cli_env, cwd=tmp_path)
    await crashed.wait_for("all services ready")
    assert all(name in crashed.output for name in ("policy", "lifecycle", "scheduler", "audit", "context"))
    crashed_state = json.loads((home / "run" / "state.json").read_text())
    crashed.proc.kill()  # no chance to clean up
    await crashed.wait()

    # The services die with their supervisor (PR_SET_PDEATHSIG); nats-server and PostgreSQL do not.
    deadline = time.monotonic() + 10
    while alive(crashed_state["services"]["lifecycle"]["pid"]):
        assert time.monotonic() < deadline, "lifecycle outlived its supervisor"
        await asyncio.sleep(0.05)

    up = await start(symbi_exe, *args, env=cli_env, cwd=tmp_path)
    try:
        await up.wait_for("all services ready")
        assert "left over from a runtime that did not stop cleanly" in up.output
        state = json.loads((home / "run" / "state.json").read_text())
        first = state["services"]["lifecycle"]["pid"]
        url = state["services"]["lifecycle"]["url"]
        pids = {"nats-server": state["nats"]["pid"], "postgres": state["postgres"]["pid"], "lifecycle": first}
        assert all(alive(pid) for pid in pids.values()), pids
        assert url.endswith(f":{free_base_port + 1}")

        # A second runtime on the same home is refused.
        second_up = await start(symbi_exe, *args, env=cli_env, cwd=tmp_path)
        assert await second_up.wait() == 1
        assert "already running" in second_up.output

        os.kill(first, signal.SIGKILL)
        await up.wait_for("signal SIGKILL")
        deadline = time.monotonic() + 30
        while True:
            restarted = json.loads((home / "run" / "state.json").read_text())["services"]["lifecycle"]["pid"]
            if restarted != first:
                break
            assert time.monotonic() < deadline, up.output
            await asyncio.sleep(0.05)
        while sum("ready after" in line and "lifecycle" in line for line in up.lines) < 2:
            assert time.monotonic() < deadline, up.output
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=2) as http:
            assert (await http.get(f"{url}/readyz")).status_code == 200
        pids["lifecycle (restarted)"] = restarted

        up.proc.send_signal(signal.SIGINT)
        assert await up.wait() == 0, up.output
    finally:
        if up.proc.returncode is None:  # the test failed half-way: still stop the runtime cleanly
            up.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(up.proc.wait(), 20)
            except TimeoutError:
                up.proc.kill()
                await up.proc.wait()

    still = {name: pid for name, pid in pids.items() if alive(pid)}
    assert still == {}, f"left running: {still}\n{up.output}"
    assert not alive(crashed_state["nats"]["pid"])
    assert not alive(crashed_state["postgres"]["pid"])
    assert mentioning(str(home)) == []
    assert not (home / "run" / "state.json").exists()
    assert "stopping nats-server" in up.output
    assert "stopping PostgreSQL" in up.output


async def test_demo_runs_the_main_job_and_walks_an_agent_through_its_lifecycle(
    tmp_path: Path,
    runtime_home: Path,
    free_base_port: int,
    symbi_exe: str,
    cli_env: dict[str, str],
    mentioning: Callable[[str], list[int]],
) -> None:
    home = runtime_home
    args = ["demo", "--home", str(home), "--base-port", str(free_base_port), "--nats-port", "0", "--quiet"]
    demo = await start(symbi_exe, *args, env=cli_env, cwd=tmp_path)
    code = await demo.wait(timeout=150)
    out = demo.output
    assert code == 0, out

    expected = [
        "main job: symbi run",
        "tier1",
        "hello world",
        "audit receipt",
        "included in the signed root",
        "Initializing → Ready",
        "Ready → Running",
        "Running → Suspended",
        "Suspended → Running",
        "Running → Ready",
        "Ready → Terminated",
        "refused in Terminated",
        "Initializing → Failed",
        "Failed → Terminated",
        "demo complete",
    ]
    positions = [out.find(text) for text in expected]
    assert all(p >= 0 for p in positions), [t for t, p in zip(expected, positions, strict=True) if p < 0]
    assert positions == sorted(positions), "transitions printed out of order"
    for field in ("resources.memory_mb", "security_tier", "external_apis[0]", "filesystem_access[0].path"):
        assert field in out
    for event_type in ("agent.registered", "agent.ready", "agent.task_assigned", "agent.suspended", "agent.resumed"):
        assert event_type in out
    assert "agent.task_completed" in out
    assert "agent.terminated" in out
    assert "agent.failed" in out
    assert "ed25519:" in out
    assert mentioning(str(home)) == []
    _assert_no_private_key_material(home, out)


def _assert_no_private_key_material(home: Path, output: str) -> None:
    """No private key (root, service signing and wrap keys) in the output, the logs, the stream or the database."""
    keys_dir, operator_dir = home / "keys", home / "operator"
    secrets: list[bytes] = []
    for key_file in [*keys_dir.glob("*/*.key"), *operator_dir.glob("*.key")]:
        encoded = key_file.read_bytes().strip()
        raw = base64.b64decode(encoded)
        secrets += [raw, encoded, raw.hex().encode()]
    assert len(secrets) >= 3 * 13  # root, six services' signing and wrap keys
    for secret in secrets[1::3] + secrets[2::3]:
        assert secret.decode() not in output
    scanned = 0
    for path in home.rglob("*"):
        if path.is_file() and keys_dir not in path.parents and operator_dir not in path.parents:
            data = path.read_bytes()
            scanned += 1
            for secret in secrets:
                assert secret not in data, f"private key material found in {path}"
    assert scanned > 10  # the NATS store, PostgreSQL's files and the logs were all looked at
