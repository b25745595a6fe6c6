"""``symbi keys init`` / ``symbi keys show`` against a real keyring directory."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from symbi_cli.main import app
from symbi_common.keyring import SERVICE_SUBJECTS, KeyRegistry
from typer.testing import CliRunner

runner = CliRunner(env={"COLUMNS": "200"})
PRIVATE = ["root.key", "master.key", *(f"{s}.key" for s in SERVICE_SUBJECTS)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_keyring_with_private_files_0600_and_never_prints_them(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert result.exit_code == 0, result.output

    for name in PRIVATE:
        assert _mode(keys / name) == 0o600, name
        secret = (keys / name).read_text().strip()
        assert secret not in result.output
        assert base64.b64decode(secret).hex() not in result.output
    assert _mode(keys / "root.pub") == 0o644
    assert "root.key" in result.output
    assert "master.key" in result.output
    registry = KeyRegistry.load(keys)
    for key in registry.document.keys:
        assert key.key_id in result.output
    assert {k.service for k in registry.document.keys} == set(SERVICE_SUBJECTS)


def test_init_is_idempotent(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in keys.iterdir()}

    again = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert again.exit_code == 0, again.output
    assert "nothing created" in again.output
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before

    # A lost service key is recreated, the others are kept, and the registry is re-issued for the new key.
    (keys / "audit.key").unlink()
    repaired = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert repaired.exit_code == 0, repaired.output
    assert "audit.key" in repaired.output
    assert (keys / "lifecycle.key").read_bytes() == before["lifecycle.key"]
    assert (keys / "audit.key").read_bytes() != before["audit.key"]
    assert _mode(keys / "audit.key") == 0o600
    KeyRegistry.load(keys)  # still verifies against the pinned root key


def test_show_lists_public_information_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0
    result = runner.invoke(app, ["keys", "show", "--dir", str(keys)])
    assert result.exit_code == 0, result.output
    registry = KeyRegistry.load(keys)
    for key in registry.document.keys:
        assert key.key_id in result.output
        assert key.service in result.output
    for subjects in SERVICE_SUBJECTS.values():
        for subject in subjects:
            assert subject in result.output
    for name in PRIVATE:
        assert (keys / name).read_text().strip() not in result.output


def test_show_refuses_a_tampered_registry(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0
    registry_file = keys / "registry.json"
    registry_file.write_text(registry_file.read_text().replace('"evt.agent.>"', '"evt.>"'))
    result = runner.invoke(app, ["keys", "show", "--dir", str(keys)])
    assert result.exit_code == 1
    assert "not signed by the pinned root key" in result.output


def test_show_without_a_keyring_says_how_to_create_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "show", "--dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "symbi keys init" in result.output
