"""``symbi agent register`` against the real lifecycle service (its own process, real NATS and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from symbi_cli.main import app
from symbi_common.operator_tokens import issue_local_token
from symbi_fixtures.runtimes import take_free_port
from typer.testing import CliRunner, Result

EXAMPLES = Path(__file__).parents[2] / "examples" / "agents"


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "symbi_lifecycle"], env=env, stdout=fh, stderr=subprocess.STDOUT)


@pytest.fixture
async def lifecycle_url(nats_url: str, database_url: str, keys_dir: Path, tmp_path: Path) -> AsyncIterator[str]:
    port = take_free_port()
    env = {
        **os.environ,
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_DATABASE_URL": database_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_HTTP_PORT": str(port),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    TOKEN["token"] = issue_local_token(keys_dir)
    proc = _spawn(env, tmp_path / "lifecycle.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=url) as http:
            while True:
                assert proc.poll() is None, (tmp_path / "lifecycle.log").read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "lifecycle service not ready"
                await asyncio.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: The operator token the commands send (the lifecycle service's keyring issued it); set by ``lifecycle_url``.
TOKEN: dict[str, str] = {}


async def invoke(*args: str, token: str | None = None) -> Result:
    runner = CliRunner(env={"SYMBI_OPERATOR_TOKEN": token or TOKEN.get("token", ""), "SYMBI_HOME": None})
    return await asyncio.to_thread(runner.invoke, app, ["agent", *args])


async def test_register_a_definition_and_a_json_config(lifecycle_url: str) -> None:
    result = await invoke("register", str(EXAMPLES / "web-fetcher.symbi"), "--url", lifecycle_url, "--id", "wf-1")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "agent wf-1 (web-fetcher 1.4.0): Ready"

    result = await invoke("register", str(EXAMPLES / "hello.json"), "--url", lifecycle_url, "--json")
    assert result.exit_code == 0, result.output
    agent = json.loads(result.stdout)
    assert (agent["name"], agent["state"]) == ("hello-agent", "Ready")


async def test_a_failing_definition_prints_its_diagnostics(lifecycle_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.symbi"
    bad.write_text("agent bad_one() {\n  with sandbox = tier7 { }\n}\n")
    os.environ["SYMBI_LIFECYCLE_URL"] = lifecycle_url  # the default comes from the environment
    try:
        result = await invoke("register", str(bad))
    finally:
        del os.environ["SYMBI_LIFECYCLE_URL"]
    assert result.exit_code == 1
    assert "(bad-one 0.1.0): Failed" in result.output
    assert f"{bad}:2:18: sandbox must be one of" in result.output
    assert "^^^^^" in result.output


async def test_an_unreachable_service_is_exit_2(tmp_path: Path) -> None:
    # (a token of its own: this test may run before, or without, any test that starts the lifecycle service)
    url = f"http://127.0.0.1:{take_free_port()}"
    result = await invoke("register", str(EXAMPLES / "hello.symbi"), "--url", url, token="not-checked-by-anyone")
    assert result.exit_code == 2
    assert "cannot reach the lifecycle service" in result.output
