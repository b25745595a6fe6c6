"""``symbi token issue|revoke|list`` and the local credential of ``symbi up``, against a real keyring and nats-server."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import nats
import pytest
from symbi_cli.credentials import TOKEN_ENV, auth_headers, operator_token, write_local_token
from symbi_cli.errors import CliError
from symbi_cli.main import app
from symbi_common.errors import Unauthenticated
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_revocations import Revocations, open_revocations_bucket
from symbi_common.operator_tokens import verify_token
from typer.testing import CliRunner

runner = CliRunner(env={"COLUMNS": "200", "SYMBI_HOME": None, TOKEN_ENV: None})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issue_prints_a_token_the_registry_issuer_signed_and_records_only_its_claims(keys_dir: Path) -> None:
    home = keys_dir.parent
    result = runner.invoke(
        app, ["token", "issue", "--name", "ann", "--role", "auditor", "--ttl", "2h", "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    claims = verify_token(token, KeyRegistry.load(keys_dir).operator_issuers())
    assert (claims.sub, claims.role) == ("ann", "auditor")
    assert 7190 <= claims.exp - claims.iat <= 7200
    ledger = home / "operator" / "tokens.jsonl"
    assert _mode(ledger) == 0o600
    assert _mode(home / "operator") == 0o700
    assert claims.tid in ledger.read_text()
    assert token not in ledger.read_text()
    assert not any(p.name == "operator-issuer.key" for p in keys_dir.rglob("*")), "the issuer key is not in the keyring"


def test_issue_refuses_an_unknown_role_and_a_bad_ttl(keys_dir: Path) -> None:
    home = str(keys_dir.parent)
    result = runner.invoke(app, ["token", "issue", "--name", "ann", "--role", "root", "--home", home])
    assert result.exit_code == 1
    assert "unknown role" in result.output
    result = runner.invoke(app, ["token", "issue", "--name", "ann", "--role", "admin", "--ttl", "soon", "--home", home])
    assert result.exit_code != 0


def test_revoke_stores_a_revocation_the_services_accept(keys_dir: Path, nats_url: str) -> None:
    home = keys_dir.parent
    result = runner.invoke(app, ["token", "issue", "--name", "bob", "--role", "operator", "--home", str(home)])
    token = result.stdout.strip().splitlines()[-1]
    issuers = KeyRegistry.load(keys_dir).operator_issuers()
    tid = verify_token(token, issuers).tid
    result = runner.invoke(
        app, ["token", "revoke", tid, "--reason", "left", "--home", str(home), "--nats-url", nats_url]
    )
    assert result.exit_code == 0, result.output

    async def stored() -> bytes:
        nc = await nats.connect(nats_url)
        try:
            entry = await (await open_revocations_bucket(nc.jetstream(), create=False)).get(tid)
            return bytes(entry.value)
        finally:
            await nc.drain()

    revocations = Revocations(issuers)
    revocations.apply(tid, asyncio.run(stored()))
    assert tid in revocations.revoked
    listed = runner.invoke(app, ["token", "list", "--home", str(home), "--nats-url", nats_url])
    assert listed.exit_code == 0, listed.output
    assert "revoked" in listed.output
    assert "bob" in listed.output


def test_revoke_refuses_what_is_not_a_token_id(keys_dir: Path) -> None:
    result = runner.invoke(app, ["token", "revoke", "not-an-id", "--home", str(keys_dir.parent)])
    assert result.exit_code == 1


def test_local_credential_is_private_and_used_by_the_cli(keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = keys_dir.parent
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = write_local_token(home, keys_dir)
    assert _mode(path) == 0o600
    claims = verify_token(operator_token(home), KeyRegistry.load(keys_dir).operator_issuers())
    assert claims.role == "admin"
    assert auth_headers(home) == {"Authorization": f"Bearer {path.read_text().strip()}"}
    monkeypatch.setenv(TOKEN_ENV, "explicit")
    assert operator_token(home) == "explicit"


def test_no_credential_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(CliError, match="symbi up"):
        operator_token(tmp_path)


def test_a_token_from_another_issuer_does_not_verify(keys_dir: Path, tmp_path: Path) -> None:
    from symbi_common.keyfiles import init_keyring

    other = tmp_path / "other" / "keys"
    init_keyring(other)
    write_local_token(other.parent, other)
    with pytest.raises(Unauthenticated):
        verify_token(operator_token(other.parent), KeyRegistry.load(keys_dir).operator_issuers())
