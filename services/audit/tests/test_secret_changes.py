"""Every change of the secrets store is on the hash-chained log as ``audit.secret_changed``, never with the value.

The real audit service (in-process) follows the real ``SECRETS`` bucket; the changes are made by ``symbi
secrets`` (the CLI, in a thread of its own) and by the store directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from nats.aio.client import Client as NatsClient
from symbi_audit.erasure import CODEC
from symbi_audit.secret_changes import SecretChangeRecorder
from symbi_cli.audit_cmd import export_log
from symbi_cli.main import app as cli
from symbi_cli.secrets_cmd import wait_audited
from symbi_common.eventstore import EventStore
from symbi_common.secret_store import SECRETS_KEY_FILE, KvSecretStore, ensure_secrets_key, load_secrets_key
from symbi_common.streams import AUDIT_STREAM, last_on_subject
from symbi_contracts.secrets.events import SecretChanged
from symbi_tlog.notes import parse_checkpoint
from symbi_tlog.offline import CHECKPOINT_SUBJECT
from typer.testing import CliRunner

from .conftest import Running, read_log

VALUE = "hunter2-3b1f9a7c0d5e"


async def _cli(*args: str, stdin: str = "") -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), input=stdin, env={"COLUMNS": "200"})
    return result.exit_code, result.output


async def _published_checkpoint_covers(nc: NatsClient, size: int) -> None:
    for _ in range(200):
        msg = await last_on_subject(nc, AUDIT_STREAM, CHECKPOINT_SUBJECT)
        if msg is not None and parse_checkpoint(msg.data.decode())[0].size >= size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no published checkpoint covers the {size} stored events")


async def test_set_and_remove_are_audited_without_the_value(
    running: Running,
    provisioned: NatsClient,
    nats_url: str,
    keys_dir: Path,
    tmp_path: Path,
    make_store: Callable[..., Awaitable[EventStore]],
) -> None:
    home = keys_dir.parent
    ensure_secrets_key(keys_dir, home / "operator")
    common = ["--home", str(home), "--nats-url", nats_url]

    code, out = await _cli("secrets", "set", "providers/openai/api_key", "--by", "alice", *common, stdin=VALUE + "\n")
    assert code == 0, out
    assert "v1 stored" in out
    assert "audited as audit.secret_changed" in out
    value_file = tmp_path / "value"
    value_file.write_text("second-" + VALUE)
    code, out = await _cli("secrets", "set", "providers/openai/api_key", "--file", str(value_file), *common)
    assert code == 0, out
    assert "v2 stored" in out
    code, out = await _cli("secrets", "list", "--json", *common)
    assert code == 0, out
    listed_secrets = [json.loads(line) for line in out.splitlines()]
    assert [(s["name"], s["version"], s["set_by"]) for s in listed_secrets] == [
        ("providers/openai/api_key", 2, "operator")
    ]
    assert VALUE not in out
    code, out = await _cli("secrets", "list", *common)
    assert code == 0, out
    assert "providers/openai/api_key" in out
    code, out = await _cli("secrets", "rm", "providers/openai/api_key", *common)
    assert code == 0, out
    assert "audited" in out
    code, out = await _cli("secrets", "rm", "providers/openai/api_key", *common)
    assert code == 1
    assert "there is no secret" in out

    # The audit records, decrypted by the audit service's own store: what changed, by whom, never the value.
    audit = await make_store("audit")
    log = await read_log(provisioned)
    subjects = [m.subject for m in log if m.subject.startswith("evt.audit.secret-")]
    assert len(subjects) == 3
    changes: list[SecretChanged] = []
    for subject in subjects:
        recorded = await audit.load("audit", subject.removeprefix("evt.audit."), CODEC)
        assert len(recorded) == 1
        event = recorded[0].event
        assert isinstance(event, SecretChanged)
        changes.append(event)
        assert VALUE.encode() not in msgspec.msgpack.encode(event)
    assert [(c.name, c.operation, c.version) for c in changes] == [
        ("providers/openai/api_key", "set", 1),
        ("providers/openai/api_key", "set", 2),
        ("providers/openai/api_key", "removed", 0),
    ]
    assert changes[0].changed_by == "alice"
    assert changes[0].key_id.startswith("aes:")
    # Nowhere in the stored log either (encrypted payloads aside, the headers are in clear).
    assert all(VALUE.encode() not in m.data for m in log)

    # `symbi audit export` carries the records (it writes what the published checkpoint covers: wait for the one
    # covering the whole log, published after the verifier's commit); the audit API lists them.
    await running.wait_for(log[-1].sequence)
    await _published_checkpoint_covers(provisioned, len(log))
    out_file = tmp_path / "log.jsonl"
    await export_log(nats_url, out_file, None)
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [e["subject"] for e in exported if e["subject"].startswith("evt.audit.secret-")] == subjects
    assert all(VALUE.encode() not in base64.b64decode(e["data"]) for e in exported)
    listed = await running.json("/v1/audit/events", aggregate=subjects[0].removeprefix("evt."))
    assert [e["event_type"] for e in listed["items"]] == ["audit.secret_changed"]


async def test_a_change_is_recorded_once_even_when_seen_again(
    running: Running, provisioned: NatsClient, keys_dir: Path, make_store: Callable[..., Awaitable[EventStore]]
) -> None:
    ensure_secrets_key(keys_dir, keys_dir.parent / "operator")
    key = load_secrets_key(keys_dir.parent / "operator" / SECRETS_KEY_FILE)
    store = await KvSecretStore.open(provisioned, key)
    info = await store.set("db/password", b"pw")
    assert await wait_audited(provisioned, info.revision) is not None
    # A replay (a restart before the position was stored) appends nothing new.
    recorder: SecretChangeRecorder = running.app.state.audit_secret_changes
    event = SecretChanged(name="db/password", operation="set", version=1, kv_sequence=info.revision)
    await recorder.record(event)
    recorded = await (await make_store("audit")).load("audit", f"secret-{info.revision}", CODEC)
    assert len(recorded) == 1
