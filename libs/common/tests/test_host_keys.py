"""Host-bound signing keys: a sandbox host's own key, what it may sign, and how rotations leave it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import msgspec
import pytest
from symbi_common.crypto import Signer
from symbi_common.errors import KeyringError, UnauthorisedSigner
from symbi_common.key_material import load_signer, load_wrap_key
from symbi_common.keyfiles import (
    OLD_WRAP_KEY_FILE,
    SIGNING_KEY_FILE,
    WRAP_KEY_FILE,
    add_host_key,
    host_dir,
    rotate_service_key,
    rotate_wrap_key,
)
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_changes import with_host_key
from symbi_common.registry_document import ACTIVE, RETIRED, RegistryDocument


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_host_key_signs_its_own_host_and_executions_but_not_another_host(keys_dir: Path) -> None:
    key = add_host_key(keys_dir, "h1")
    registry = KeyRegistry.load(keys_dir)

    assert key.host == "h1"
    assert key.service == "sandbox-agent"
    assert key.status == ACTIVE
    assert registry.host_of(key.key_id) == "h1"
    assert registry.active_key("sandbox-agent", "h1") == key
    assert registry.active_key("sandbox-agent") != key  # never the service's own key
    assert "evt.host.>" not in key.subjects
    assert "evt.host.h1" in key.subjects
    registry.authorise(key.key_id, "evt.host.h1")
    registry.authorise(key.key_id, "evt.execution.x")
    with pytest.raises(UnauthorisedSigner):
        registry.authorise(key.key_id, "evt.host.h2")
    with pytest.raises(UnauthorisedSigner):
        registry.authorise(key.key_id, "evt.agent.a1")
    assert registry.document.changes[-1].kind == "add-host"
    # The service's own key still signs for every host.
    registry.authorise(registry.active_key("sandbox-agent").key_id, "evt.host.h2")  # type: ignore[union-attr]


def test_the_host_directory_holds_its_key_and_a_copy_of_the_service_wrap_key(keys_dir: Path) -> None:
    key = add_host_key(keys_dir, "h1")
    directory = host_dir(keys_dir, "h1")

    assert directory == keys_dir / "sandbox-agent@h1"
    assert _mode(directory) == 0o700
    assert _mode(directory / SIGNING_KEY_FILE) == 0o600
    assert _mode(directory / WRAP_KEY_FILE) == 0o600
    assert load_signer(directory / SIGNING_KEY_FILE).key_id == key.key_id
    service_wrap = load_wrap_key(keys_dir / "sandbox-agent" / WRAP_KEY_FILE)
    assert load_wrap_key(directory / WRAP_KEY_FILE).public_key == service_wrap.public_key
    assert key.wrap_public_key == service_wrap.public_key
    # The public files are there too, and verify (the directory is a daemon's whole SYMBI_KEYS_DIR).
    assert KeyRegistry.load(directory).document == KeyRegistry.load(keys_dir).document


def test_a_wrap_key_rotation_reaches_every_host_directory(keys_dir: Path) -> None:
    add_host_key(keys_dir, "h1")
    add_host_key(keys_dir, "h2")
    before = load_wrap_key(keys_dir / "sandbox-agent" / WRAP_KEY_FILE).public_key

    rotate_wrap_key(keys_dir, "sandbox-agent")

    new = load_wrap_key(keys_dir / "sandbox-agent" / WRAP_KEY_FILE).public_key
    assert new != before
    for host in ("h1", "h2"):
        directory = host_dir(keys_dir, host)
        assert load_wrap_key(directory / WRAP_KEY_FILE).public_key == new
        assert load_wrap_key(directory / OLD_WRAP_KEY_FILE).public_key == before
        assert KeyRegistry.load(directory).wrap_key_of("sandbox-agent")[1] == new


def test_rotating_the_service_key_leaves_host_keys_active(keys_dir: Path) -> None:
    host_key = add_host_key(keys_dir, "h1")
    old_service = KeyRegistry.load(keys_dir).active_key("sandbox-agent")
    assert old_service is not None

    new_service = rotate_service_key(keys_dir, "sandbox-agent")

    registry = KeyRegistry.load(keys_dir)
    assert registry.key(host_key.key_id).status == ACTIVE  # type: ignore[union-attr]
    assert registry.active_key("sandbox-agent", "h1") == host_key
    assert registry.key(old_service.key_id).status == RETIRED  # type: ignore[union-attr]
    assert registry.active_key("sandbox-agent") == new_service


def test_adding_a_host_again_retires_its_previous_key_only(keys_dir: Path) -> None:
    first = add_host_key(keys_dir, "h1")
    other = add_host_key(keys_dir, "h2")
    service = KeyRegistry.load(keys_dir).active_key("sandbox-agent")

    second = add_host_key(keys_dir, "h1")

    registry = KeyRegistry.load(keys_dir)
    assert second.key_id != first.key_id
    assert registry.key(first.key_id).status == RETIRED  # type: ignore[union-attr]
    assert registry.active_key("sandbox-agent", "h1") == second
    assert registry.active_key("sandbox-agent", "h2") == other
    assert registry.active_key("sandbox-agent") == service
    assert registry.document.changes[-1].kind == "rotate-host"
    assert load_signer(host_dir(keys_dir, "h1") / SIGNING_KEY_FILE).key_id == second.key_id


@pytest.mark.parametrize("bad", ["", "a.b", "h1.>", "*", "h 1", "h1\n", "x" * 129])
def test_a_host_id_that_is_not_one_subject_token_is_refused(keys_dir: Path, bad: str) -> None:
    doc = KeyRegistry.load(keys_dir).document
    with pytest.raises(KeyringError, match="not a valid host id"):
        with_host_key(doc, bad, Signer.generate(), b"\x00" * 32)
    with pytest.raises(KeyringError, match="not a valid host id"):
        add_host_key(keys_dir, bad)
    assert KeyRegistry.load(keys_dir).document == doc  # nothing registered
    assert not list(keys_dir.glob("sandbox-agent@*"))


def test_a_registry_written_before_host_keys_still_loads(keys_dir: Path) -> None:
    data = json.loads((keys_dir / "registry.json").read_bytes())
    for key in data["keys"]:
        key.pop("host", None)
    doc = msgspec.json.decode(json.dumps(data).encode(), type=RegistryDocument)

    registry = KeyRegistry(doc)
    assert all(k.host is None for k in doc.keys)
    assert registry.active_key("sandbox-agent") is not None
    assert registry.active_key("sandbox-agent", "h1") is None
