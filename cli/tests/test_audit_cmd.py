"""``symbi audit export`` and ``symbi audit verify`` against a real JetStream with the real audit service."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from symbi_audit.main import build_app
from symbi_cli.audit_cmd import audit_app, export_log
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from typer.testing import CliRunner


class Noted(Event, frozen=True, tag="agent.noted"):
    n: int


CODEC: EventCodec[Noted] = EventCodec([Noted])


@pytest.fixture
async def audited(
    make_store: Callable[..., Awaitable[EventStore]],
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
) -> AsyncIterator[int]:
    """25 events, verified and checkpointed by the running audit service; yields the tree size."""
    settings = load_settings(
        env={
            "SYMBI_NATS_URL": nats_url,
            "SYMBI_DATABASE_URL": database_url,
            "SYMBI_KEYS_DIR": str(keys_dir),
            "SYMBI_LOG_LEVEL": "warning",
            "SYMBI_POLICY__ENFORCEMENT": "allow-all",
            "SYMBI_AUDIT__CHECKPOINT_EVERY": "1000",
            "SYMBI_AUDIT__CHECKPOINT_INTERVAL_S": "0.2",
        }
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        store = await make_store("lifecycle")
        tip = NEW_AGGREGATE
        for i in range(5):
            recs = await store.append("agent", f"c{i}", [Noted(n=j) for j in range(5)], CODEC, expected=tip)
            tip = NEW_AGGREGATE
        last = recs[-1].sequence
        service = app.state.audit
        assert await service.runner.wait_for(last)
        for _ in range(100):
            cp = await service.store.checkpoint()
            if cp is not None and cp.size == last:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no checkpoint")
        for _ in range(100):  # published on the AUDIT stream
            if not await service.store.unpublished_checkpoints():
                break
            await asyncio.sleep(0.05)
        yield last


async def test_export_then_verify_offline(audited: int, nats_url: str, keys_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    count, size = await export_log(nats_url, out, tmp_path / "log.checkpoint")
    assert count == audited == size
    runner = CliRunner()
    # Only the public half of the keyring is needed.
    public = tmp_path / "public-keys"
    public.mkdir()
    for name in ("root.pub", "registry.json", "registry.json.sig"):
        (public / name).write_bytes((keys_dir / name).read_bytes())
    ok = runner.invoke(
        audit_app, ["verify", str(out), "--checkpoint", str(tmp_path / "log.checkpoint"), "--keys-dir", str(public)]
    )
    assert ok.exit_code == 0, ok.output
    assert f"{audited} events verified against checkpoint symbi-audit size {audited}" in ok.output
    as_json = runner.invoke(
        audit_app, ["verify", str(out), "-c", str(tmp_path / "log.checkpoint"), "--keys-dir", str(public), "--json"]
    )
    doc = json.loads(as_json.output)
    assert doc["ok"]
    assert doc["events"] == audited
    assert doc["findings"] == []

    # Tampered: one event's ciphertext edited in the file.
    lines = out.read_bytes().splitlines()
    item = json.loads(lines[7])
    data = bytearray(base64.b64decode(item["data"]))
    data[-70] ^= 0xFF  # inside the ciphertext, before the 64-byte signature
    item["data"] = base64.b64encode(bytes(data)).decode()
    lines[7] = json.dumps(item).encode()
    bad = tmp_path / "tampered.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    res = runner.invoke(
        audit_app, ["verify", str(bad), "-c", str(tmp_path / "log.checkpoint"), "--keys-dir", str(public), "--json"]
    )
    assert res.exit_code == 1
    kinds = [(f["sequence"], f["kind"]) for f in json.loads(res.output)["findings"]]
    assert kinds == [(8, "bad_signature"), (audited, "root_mismatch")]
    # Truncated
    short = tmp_path / "short.jsonl"
    short.write_bytes(b"\n".join(out.read_bytes().splitlines()[:-2]) + b"\n")
    res = runner.invoke(
        audit_app, ["verify", str(short), "-c", str(tmp_path / "log.checkpoint"), "--keys-dir", str(public)]
    )
    assert res.exit_code == 1
    assert "log_truncated" in res.output
    # Unusable input: exit 2 with the reason.
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    res = runner.invoke(audit_app, ["verify", str(garbage), "--keys-dir", str(public)])
    assert res.exit_code == 2
    assert "line 1" in res.output


def test_export_command_writes_files(audited: int, nats_url: str, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    res = CliRunner().invoke(audit_app, ["export", "--out", str(out), "--nats-url", nats_url])
    assert res.exit_code == 0, res.output
    assert len(out.read_bytes().splitlines()) == audited
    assert (tmp_path / "export.checkpoint").read_text().startswith(f"symbi-audit\n{audited}\n")
