"""The verifier as a real process: killed with SIGKILL mid-stream, restarted, it continues from its stored
position with no event skipped or counted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
from nats.aio.client import Client as NatsClient
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_fixtures.runtimes import take_free_port
from symbi_tlog.offline import TrustAnchor, verify_export

from .conftest import Writer, audit_env, read_log


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "symbi_audit"], env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT
        )


async def _status(http: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> dict | None:
    if proc.poll() is not None:
        raise AssertionError(f"audit service exited: {log.read_text()[-2000:]}")  # noqa: ASYNC240
    try:
        resp = await http.get("/v1/audit/status")
    except httpx.TransportError:
        return None
    return resp.json() if resp.status_code == 200 else None


async def test_kill_9_and_restart_skips_nothing_and_repeats_nothing(
    writer: Writer,
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    registry: KeyRegistry,
    tmp_path: Path,
) -> None:
    port = take_free_port()
    env = audit_env(
        nats_url, database_url, keys_dir, SYMBI_HTTP_PORT=str(port), SYMBI_AUDIT__BATCH="10",
        SYMBI_AUDIT__CHECKPOINT_EVERY="25",
    )  # fmt: skip
    log = tmp_path / "audit.log"
    total_rounds = 1200  # 1,800 events
    writing = asyncio.create_task(writer.mixed(total_rounds))
    proc = _start(env, log)
    killed_at = None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=5, headers=bearer_header(issue_local_token(keys_dir))
    ) as http:
        try:
            for _ in range(1000):
                status = await _status(http, proc, log)
                if status and status["sequence"] >= 200:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed_at = status["sequence"]
                    break
                await asyncio.sleep(0.02)
            assert killed_at is not None, "the verifier never got going"
            last = await writing
            assert killed_at < last, "killed after it had verified everything; the test proved nothing"
            proc = _start(env, log)
            for _ in range(1500):
                status = await _status(http, proc, log)
                if status and status["sequence"] == last:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"verifier did not catch up: {status}")
            assert status["tree_size"] == last
            assert status["findings"] == 0
            for _ in range(50):  # the interval checkpoint covers everything
                status = await _status(http, proc, log)
                if status and status["checkpoint"]["size"] == last:
                    break
                await asyncio.sleep(0.1)
            note = status["checkpoint"]["note"]
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT sequence, leaf_index FROM audit.events ORDER BY sequence")
        assert [r["sequence"] for r in rows] == list(range(1, last + 1))
        assert [r["leaf_index"] for r in rows] == list(range(last))
        assert await conn.fetchval("SELECT count(*) FROM audit.nodes WHERE level = 0") == last
        sizes = [r["size"] for r in await conn.fetch("SELECT size FROM audit.checkpoints ORDER BY size")]
        assert sizes == sorted(set(sizes))
        assert sizes[-1] == last
    finally:
        await conn.close()
    # The stored tree is exactly the tree of the log: nothing skipped, nothing twice.
    report = verify_export(await read_log(provisioned), note, TrustAnchor(registry))
    assert report.findings == []
    assert report.events == last
