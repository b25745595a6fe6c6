"""``symbi tools`` against the real sandbox-agent (its own process, real NATS, real Docker engine) and a real
MCP server over streamable HTTP (tests/mcp_servers/toolbox.py of the sandbox-agent, signed with SchemaPin)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from schemapin.bundle import SchemaPinTrustBundle, create_bundled_discovery
from schemapin.crypto import KeyManager
from schemapin.utils import create_well_known_response
from symbi_cli.main import app
from symbi_common.operator_tokens import issue_local_token
from symbi_fixtures.runtimes import take_free_port
from typer.testing import CliRunner, Result

TOOLBOX = Path(__file__).parents[2] / "services" / "sandbox-agent" / "tests" / "mcp_servers" / "toolbox.py"
DOMAIN = "tools.example.com"
TOKEN: dict[str, str] = {}


async def _wait_port(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        assert proc.returncode is None, "the process ended"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
async def sandbox_url(provisioned: NatsClient, nats_url: str, keys_dir: Path, tmp_path: Path) -> AsyncIterator[str]:
    private, public = KeyManager.generate_keypair()
    well_known = create_well_known_response(KeyManager.export_public_key_pem(public), "Example Tools")
    trust = SchemaPinTrustBundle("1.2", "2026-01-01T00:00:00Z", [create_bundled_discovery(DOMAIN, well_known)], [])
    (tmp_path / "trust.json").write_text(json.dumps(trust.to_dict()))
    tool_port, port = take_free_port(), take_free_port()
    toolbox_env = {
        **os.environ,
        "TOOLBOX_HTTP_PORT": str(tool_port),
        "TOOLBOX_SIGNING_KEY": KeyManager.export_private_key_pem(private),
    }
    toolbox = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOLBOX), env=toolbox_env, stderr=subprocess.DEVNULL
    )
    # The toolbox listens on loopback, which the egress rules refuse unless allowed.
    (tmp_path / "symbi.toml").write_text('[egress]\nallow_addresses = ["127.0.0.1/32"]\n')
    env = {
        **os.environ,
        "SYMBI_CONFIG_PATH": str(tmp_path / "symbi.toml"),
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_HTTP_PORT": str(port),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBI_SANDBOX__HOST_ID": f"cli{port}",
        "SYMBI_SANDBOX__WORK_DIR": str(tmp_path / "work"),
        "SYMBI_SANDBOX__TOOLS_TRUST_BUNDLE": str(tmp_path / "trust.json"),
    }
    log = (tmp_path / "sandbox.log").open("wb")
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symbi_sandbox_agent", env=env, stdout=log, stderr=subprocess.STDOUT
    )
    TOKEN["token"] = issue_local_token(keys_dir)
    TOKEN["server"] = f"http://127.0.0.1:{tool_port}/mcp"
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_port(tool_port, toolbox)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=url) as http:
            while True:
                assert daemon.returncode is None, (tmp_path / "sandbox.log").read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "sandbox-agent not ready"
                await asyncio.sleep(0.2)
        yield url
    finally:
        for proc in (daemon, toolbox):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def invoke(url: str, *args: str) -> Result:
    runner = CliRunner(env={"SYMBI_OPERATOR_TOKEN": TOKEN["token"], "SYMBI_HOME": None, "COLUMNS": "200"})
    return await asyncio.to_thread(runner.invoke, app, ["tools", *args, "--url", url])


async def test_add_list_show_approve_revoke(sandbox_url: str) -> None:
    added = await invoke(sandbox_url, "add", "web", "--server-url", TOKEN["server"], "--domain", DOMAIN, "--json")
    assert added.exit_code == 0, added.output
    tools = {t["name"]: t for t in json.loads(added.output)["tools"]}
    assert tools["web.add"]["status"] == "pending"
    assert tools["web.add"]["verification"] == "verified"
    listed = await invoke(sandbox_url, "list")
    assert listed.exit_code == 0, listed.output
    assert "web.add" in listed.output
    assert "verified" in listed.output
    shown = await invoke(sandbox_url, "show", "web.add")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert detail["definition"]["description"] == "Add two integers."
    # Signed for a domain, nothing secret passed: the assessment finds nothing.
    assert (detail["server"]["tier"], detail["server"]["risk_factors"]) == ("tier1", [])
    wrong = await invoke(sandbox_url, "approve", "web.add", "--pin", "sha256:" + "0" * 64)
    assert wrong.exit_code == 1
    assert "tool_refused" in wrong.output
    approved = await invoke(sandbox_url, "approve", "web.add", "--pin", detail["pin"])
    assert approved.exit_code == 0, approved.output
    assert f"web.add: approved ({detail['pin']})" in approved.output
    revoked = await invoke(sandbox_url, "revoke", "web.add", "--reason", "test")
    assert revoked.exit_code == 0, revoked.output
    assert "web.add: revoked" in revoked.output
    missing = await invoke(sandbox_url, "show", "web.nope")
    assert missing.exit_code == 1
    assert "unknown_tool" in missing.output
    removed = await invoke(sandbox_url, "rm", "web", "--reason", "retired")
    assert removed.exit_code == 0, removed.output
    assert "web: removed (web.add," in removed.output
    gone = await invoke(sandbox_url, "show", "web.add")
    assert (gone.exit_code, "unknown_tool" in gone.output) == (1, True)
    twice = await invoke(sandbox_url, "rm", "web")
    assert (twice.exit_code, "unknown_tool" in twice.output) == (1, True)
    # Added again, the same name starts fresh: the tool revoked before is pending approval.
    again = await invoke(sandbox_url, "add", "web", "--server-url", TOKEN["server"], "--env", "API_TOKEN=x")
    assert again.exit_code == 0, again.output
    assert "web: tier2 (assessed tier2: secrets_passed:API_TOKEN, no_schemapin_domain)" in again.output
    assert "web.add" in again.output
    assert "pending" in again.output
    lower = await invoke(sandbox_url, "add", "low", "--server-url", TOKEN["server"], "--tier", "tier1")
    assert (lower.exit_code, "tool_tier_refused" in lower.output) == (1, True)
    assert "no_schemapin_domain" in lower.output
