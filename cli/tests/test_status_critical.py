"""``symbi status`` exits non-zero (2) and says CRITICAL when the audit service finds its log missing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from nats.aio.client import Client as NatsClient
from symbi_audit.main import build_app
from symbi_cli.main import app as symbi
from symbi_cli.runtime_options import SERVICE_PORT_OFFSETS
from symbi_common.events import Event, EventCodec
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from symbi_common.streams import EVENTS_STREAM
from typer.testing import CliRunner


class Noted(Event, frozen=True, tag="agent.noted"):
    n: int


CODEC: EventCodec[Noted] = EventCodec([Noted])


async def test_status_exits_2_on_a_critical_audit_finding(
    make_store: Callable[..., Any],
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    free_base_port: int,
    tmp_path: Path,
    issue_operator_token: Callable[..., str],
) -> None:
    settings = load_settings(
        env={
            "SYMBI_NATS_URL": nats_url,
            "SYMBI_DATABASE_URL": database_url,
            "SYMBI_KEYS_DIR": str(keys_dir),
            "SYMBI_LOG_LEVEL": "warning",
            "SYMBI_POLICY__ENFORCEMENT": "allow-all",
            "SYMBI_AUDIT__GUARD_INTERVAL_S": "0.1",
            "SYMBI_AUDIT__CHECKPOINT_INTERVAL_S": "0.1",
        }
    )
    app = build_app(settings)
    port = free_base_port + SERVICE_PORT_OFFSETS["audit"]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10)
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        service = app.state.audit
        store = await make_store("lifecycle")
        recs = await store.append("agent", "s1", [Noted(n=1), Noted(n=2)], CODEC, expected=NEW_AGGREGATE)
        for _ in range(100):
            if (cp := await service.store.checkpoint()) is not None and cp.last_sequence == recs[-1].sequence:
                break
            await asyncio.sleep(0.05)
        argv = ["status", "--home", str(tmp_path / "none"), "--base-port", str(free_base_port), "--json"]
        env = {"SYMBI_OPERATOR_TOKEN": issue_operator_token(role="auditor")}  # the audit status needs a reader
        result = await asyncio.to_thread(CliRunner().invoke, symbi, argv, env=env)
        assert result.exit_code == 0, result.output
        await provisioned.jetstream().delete_stream(EVENTS_STREAM)
        for _ in range(100):
            if service.guard.critical:
                break
            await asyncio.sleep(0.05)
        result = await asyncio.to_thread(CliRunner().invoke, symbi, argv[:-1], env=env)
        assert result.exit_code == 2, result.output
        assert "CRITICAL audit log stream_missing" in result.output
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
