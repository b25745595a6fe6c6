"""``symbi keys add-host``: a sandbox host's own key, and a sandbox-agent daemon starting with it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from symbi_cli.main import app
from symbi_common.errors import KeyringError
from symbi_common.events import Event, EventCodec
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_fixtures.key_rotation import eventually
from typer.testing import CliRunner

runner = CliRunner(env={"COLUMNS": "200"})


class Registered(Event, tag="test.host_registered", frozen=True):
    text: str


codec: EventCodec[Event] = EventCodec([Registered])


def _daemon(nats_url: str, directory: Path, host_id: str) -> ServiceRuntime:
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(directory),
        "SYMBI_SANDBOX__HOST_ID": host_id,
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    return ServiceRuntime("sandbox-agent", load_settings(env=env), use_database=False)


def test_add_host_writes_the_host_directory_and_says_how_to_use_it(keys_dir: Path) -> None:
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])

    assert result.exit_code == 0, result.output
    directory = keys_dir / "sandbox-agent@h1"
    key = KeyRegistry.load(keys_dir).active_key("sandbox-agent", "h1")
    assert key is not None
    assert key.host == "h1"
    assert load_signer(directory / "signing.key").key_id == key.key_id
    assert key.key_id in result.output
    assert f"give host h1 the directory {directory} as its SYMBI_KEYS_DIR" in result.output
    assert "HOST_ID=h1" in result.output

    shown = runner.invoke(app, ["keys", "show", "--dir", str(keys_dir)])
    assert shown.exit_code == 0, shown.output
    assert "host h1" in shown.output
    assert key.key_id in shown.output


def test_add_host_refuses_a_bad_host_id(keys_dir: Path) -> None:
    result = runner.invoke(app, ["keys", "add-host", "h1.>", "--keys-dir", str(keys_dir)])

    assert result.exit_code == 1
    assert "not a valid host id" in result.output
    assert KeyRegistry.load(keys_dir).document.changes[-1].kind != "add-host"


async def test_a_host_daemon_starts_with_its_own_key_and_follows_its_rotation(nats_url: str, keys_dir: Path) -> None:
    added = await asyncio.to_thread(
        runner.invoke, app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir), "--nats-url", nats_url]
    )
    assert added.exit_code == 0, added.output
    first = KeyRegistry.load(keys_dir).active_key("sandbox-agent", "h1")
    assert first is not None

    daemon = _daemon(nats_url, keys_dir / "sandbox-agent@h1", "h1")
    await daemon.start()
    try:
        assert daemon.store.signer.key_id == first.key_id
        (event,) = await daemon.store.append("host", "h1", [Registered(text="up")], codec, expected=NEW_AGGREGATE)
        assert event.header.signing_key_id == first.key_id

        # Adding the host again replaces its key; the running daemon switches to the new one.
        again = await asyncio.to_thread(
            runner.invoke, app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir), "--nats-url", nats_url]
        )
        assert again.exit_code == 0, again.output
        second = KeyRegistry.load(keys_dir).active_key("sandbox-agent", "h1")
        assert second is not None
        assert second.key_id != first.key_id
        await eventually(lambda: daemon.store.signer.key_id == second.key_id, "the daemon signs with its new key")
        agg = uuid.uuid4().hex[:12]
        (execution,) = await daemon.store.append(
            "execution", agg, [Registered(text="ran")], codec, expected=NEW_AGGREGATE
        )
        assert execution.header.signing_key_id == second.key_id
    finally:
        await daemon.stop()


async def test_a_host_key_does_not_start_a_daemon_of_another_host(nats_url: str, keys_dir: Path) -> None:
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output

    daemon = _daemon(nats_url, keys_dir / "sandbox-agent@h1", "h2")
    with pytest.raises(KeyringError, match=r"sandbox host h1.*this daemon is host h2"):
        await daemon.start()
    assert not daemon.started


async def test_a_retired_host_key_does_not_start_its_daemon(nats_url: str, keys_dir: Path) -> None:
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output
    stale = keys_dir / "sandbox-agent@h1" / "signing.key"
    kept = stale.read_bytes()
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output
    stale.write_bytes(kept)  # the host's previous (now retired) key

    with pytest.raises(KeyringError, match="is not the active key of host h1 of sandbox-agent"):
        await _daemon(nats_url, keys_dir / "sandbox-agent@h1", "h1").start()


async def test_a_host_key_does_not_start_another_service(nats_url: str, keys_dir: Path) -> None:
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir / "sandbox-agent@h1")}

    with pytest.raises(KeyringError, match="bound to sandbox host h1; scheduler cannot start with it"):
        await ServiceRuntime("scheduler", load_settings(env=env), use_database=False).start()


async def test_a_host_with_its_own_key_does_not_start_with_the_service_key(nats_url: str, keys_dir: Path) -> None:
    """Once a host has a key of its own, a directory with the service's key left on it does not start its daemon;
    another host (without one) still starts with the service's key."""
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output

    with pytest.raises(KeyringError, match="sandbox host h1 has a key of its own"):
        await _daemon(nats_url, keys_dir / "sandbox-agent", "h1").start()
    other = _daemon(nats_url, keys_dir / "sandbox-agent", "h2")
    await other.start()
    try:
        assert other.started
    finally:
        await other.stop()


async def test_a_host_whose_key_was_revoked_does_not_start_with_the_service_key(nats_url: str, keys_dir: Path) -> None:
    result = runner.invoke(app, ["keys", "add-host", "h1", "--keys-dir", str(keys_dir)])
    assert result.exit_code == 0, result.output
    key = KeyRegistry.load(keys_dir).active_key("sandbox-agent", "h1")
    assert key is not None
    result = runner.invoke(app, ["keys", "revoke", key.key_id, "--from-start", "--dir", str(keys_dir)])
    assert result.exit_code == 0, result.output

    with pytest.raises(KeyringError, match="sandbox host h1 has a key of its own"):
        await _daemon(nats_url, keys_dir / "sandbox-agent", "h1").start()
