"""``symbi keys init / show / rotate / revoke`` against a real keyring directory."""

from __future__ import annotations

import asyncio
import base64
import stat
import subprocess
from pathlib import Path

import httpx
import nats
import pytest
from symbi_cli.main import app
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.errors import KeyRevoked
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.operator_tokens import bearer_header
from typer.testing import CliRunner

runner = CliRunner(env={"COLUMNS": "200"})
PRIVATE = ["../operator/root.key", *(f"{s}/{f}" for s in SERVICE_SUBJECTS for f in ("signing.key", "wrap.key"))]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_creates_keyring_with_private_files_0600_and_never_prints_them(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert result.exit_code == 0, result.output

    for name in PRIVATE:
        assert _mode(keys / name) == 0o600, name
        secret = (keys / name).read_text().strip()
        assert secret not in result.output
        assert base64.b64decode(secret).hex() not in result.output
    assert _mode(tmp_path / "operator") == 0o700
    for service in SERVICE_SUBJECTS:
        assert _mode(keys / service) == 0o700
    assert _mode(keys / "root.pub") == 0o644
    assert "operator/root.key" in result.output
    assert "lifecycle/wrap.key" in result.output
    registry = KeyRegistry.load(keys)
    for key in registry.document.keys:
        assert key.key_id in result.output
    assert {k.service for k in registry.document.keys} == set(SERVICE_SUBJECTS)


def test_init_is_idempotent(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0
    before = _files(tmp_path)

    again = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert again.exit_code == 0, again.output
    assert "nothing created" in again.output
    assert _files(tmp_path) == before

    # A lost service key is recreated, the others are kept, and the registry gets a new version.
    (keys / "audit" / "signing.key").unlink()
    repaired = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert repaired.exit_code == 0, repaired.output
    assert "audit/signing.key" in repaired.output
    assert (keys / "lifecycle" / "signing.key").read_bytes() == before["keys/lifecycle/signing.key"]
    assert (keys / "audit" / "signing.key").read_bytes() != before["keys/audit/signing.key"]
    assert _mode(keys / "audit" / "signing.key") == 0o600
    KeyRegistry.load(keys / "audit")  # still verifies against the pinned root key


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
    assert "mode 0600" in result.output
    for name in PRIVATE:
        assert (keys / name).read_text().strip() not in result.output


def test_rotate_and_revoke(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0
    old = load_signer(keys / "policy" / "signing.key")

    rotated = runner.invoke(app, ["keys", "rotate", "policy", "--dir", str(keys)])
    assert rotated.exit_code == 0, rotated.output
    new = load_signer(keys / "policy" / "signing.key")
    assert new.key_id in rotated.output
    assert new.key_id != old.key_id

    usage = runner.invoke(app, ["keys", "revoke", old.key_id, "--dir", str(keys)])
    assert usage.exit_code == 2
    assert "--after-sequence" in usage.output

    revoked = runner.invoke(app, ["keys", "revoke", old.key_id, "--after-sequence", "5", "--dir", str(keys)])
    assert revoked.exit_code == 0, revoked.output
    assert "after sequence 5" in revoked.output
    registry = KeyRegistry.load(keys / "policy")
    registry.authorise(old.key_id, "evt.policy.p", sequence=5)
    with pytest.raises(KeyRevoked):
        registry.authorise(old.key_id, "evt.policy.p", sequence=6)
    registry.authorise(new.key_id, "evt.policy.p", sequence=6)

    shown = runner.invoke(app, ["keys", "show", "--dir", str(keys)])
    assert "revoked after seq 5" in shown.output
    assert "retired" not in shown.output  # the rotated-out key is now revoked

    again = runner.invoke(app, ["keys", "revoke", old.key_id, "--from-start", "--dir", str(keys)])
    assert again.exit_code == 1
    assert "already revoked" in again.output
    unknown = runner.invoke(app, ["keys", "rotate", "nobody", "--dir", str(keys)])
    assert unknown.exit_code == 1
    assert "unknown service" in unknown.output


def test_rotate_issuer_retires_or_with_revoke_revokes_the_old_issuer(tmp_path: Path) -> None:
    """`symbi keys rotate-issuer` retires the old issuer; `--revoke` (its key is compromised) revokes it, which the
    services tell apart (`issuer_revoked`: its revocations stop counting too). `keys show` lists the issuers."""
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0

    def issuers() -> list[tuple[str, str]]:
        return [(i.key_id, i.status) for i in KeyRegistry.load(keys / "policy").document.operator_issuers]

    [(first, status)] = issuers()
    assert status == "active"
    retired = runner.invoke(app, ["keys", "rotate-issuer", "--dir", str(keys)])
    assert retired.exit_code == 0, retired.output
    assert f"the old issuer {first} is retired" in retired.output
    second = issuers()[1][0]
    revoked = runner.invoke(app, ["keys", "rotate-issuer", "--revoke", "--dir", str(keys)])
    assert revoked.exit_code == 0, revoked.output
    assert f"the old issuer {second} is revoked" in revoked.output
    third = issuers()[2][0]
    assert issuers() == [(first, "retired"), (second, "revoked"), (third, "active")]
    shown = runner.invoke(app, ["keys", "show", "--dir", str(keys)]).output
    for key_id, status in issuers():
        assert f"operator-token issuer {key_id}  {status}" in shown


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


def test_rotate_wrap_keeps_the_old_key_until_re_sealed(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keys", "init", "--dir", str(keys)]).exit_code == 0
    old = (keys / "policy" / "wrap.key").read_bytes()

    rotated = runner.invoke(app, ["keys", "rotate", "policy", "--wrap", "--dir", str(keys)])
    assert rotated.exit_code == 0, rotated.output
    assert "no running runtime found" in rotated.output
    assert (keys / "policy" / "wrap.old.key").read_bytes() == old
    assert _mode(keys / "policy" / "wrap.old.key") == 0o600
    assert _mode(keys / "policy" / "wrap.key") == 0o600
    registry = KeyRegistry.load(keys / "policy")
    change = registry.document.changes[-1]
    assert (change.kind, change.service) == ("rotate-wrap", "policy")
    assert change.key_id in rotated.output
    assert registry.wrap_key_of("policy")[0] == change.key_id

    again = runner.invoke(app, ["keys", "rotate", "policy", "--wrap", "--dir", str(keys)])
    assert again.exit_code == 1
    assert "has not re-sealed" in again.output


async def test_rotate_publishes_to_the_running_runtime_and_history_checks_it(
    runtime_home: Path, free_base_port: int, symbi_exe: str, cli_env: dict[str, str]
) -> None:
    rt = LocalRuntime(
        RuntimeOptions(home=runtime_home, services=[], base_port=free_base_port, nats_port=None, env=cli_env)
    )
    await rt.start()
    try:
        keys = str(runtime_home / "keys")
        old = KeyRegistry.load(runtime_home / "keys").active_key("lifecycle")
        assert old is not None
        rotated = await _symbi(symbi_exe, cli_env, "keys", "rotate", "lifecycle", "--dir", keys)
        assert rotated.returncode == 0, rotated.stderr
        assert "published on REGISTRY: running services apply it now" in rotated.stdout
        assert f"`symbi keys close {old.key_id}`" in " ".join(rotated.stdout.split())
        version = KeyRegistry.load(runtime_home / "keys").version
        new = KeyRegistry.load(runtime_home / "keys").active_key("lifecycle")
        assert new is not None
        active = await _symbi(symbi_exe, cli_env, "keys", "close", new.key_id, "--dir", keys)
        assert active.returncode == 1
        assert "active, not retired (rotate first" in " ".join(active.stderr.split())

        # The retired key's validity ends at the stream's position now: a leaked retired key signs nothing new.
        nc = await nats.connect(**server_options(rt.nats_url_for("admin")), allow_reconnect=False)
        try:
            last = (await nc.jetstream().stream_info("EVENTS")).state.last_seq
        finally:
            await nc.drain()
        closed = await _symbi(symbi_exe, cli_env, "keys", "close", old.key_id, "--dir", keys)
        assert closed.returncode == 0, closed.stderr
        assert f"events it signs after sequence {last} are refused" in " ".join(closed.stdout.split())
        registry = KeyRegistry.load(runtime_home / "keys")
        assert registry.authorise(old.key_id, "evt.agent.a1", sequence=last) is not None
        with pytest.raises(KeyRevoked):
            registry.authorise(old.key_id, "evt.agent.a1", sequence=last + 1)
        history = await _symbi(symbi_exe, cli_env, "keys", "history", "--dir", keys)
        assert history.returncode == 0, history.stderr
        lines = history.stdout.splitlines()
        assert len(lines) == 3  # the version `symbi up` published, the rotation and the close
        assert f"v{version} ✓ rotate lifecycle" in lines[1]
        assert f"v{version + 1} ✓ revoke lifecycle {old.key_id}" in lines[2]
    finally:
        await rt.stop()


async def _symbi(exe: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [exe, *args], env=env, capture_output=True, text=True, timeout=60)


class _Lines:
    """A runtime reporter that keeps the services' output lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, message: str) -> None:
        pass

    def output(self, service: str, line: str) -> None:
        self.lines.append(f"{service} {line}")

    def event(self, service: str, message: str, kind: str) -> None:
        pass


async def test_a_service_under_symbi_up_applies_a_rotation_with_its_own_credentials(
    runtime_home: Path, free_base_port: int, symbi_exe: str, cli_env: dict[str, str]
) -> None:
    env = dict(cli_env, SYMBI_LOG_LEVEL="info", SYMBI_LOG_FORMAT="json")
    lines = _Lines()
    options = RuntimeOptions(
        home=runtime_home, services=["lifecycle"], base_port=free_base_port, nats_port=None, env=env
    )
    rt = LocalRuntime(options, lines)
    await rt.start()
    try:
        await rt.wait_ready(timeout=60)
        rotated = await _symbi(symbi_exe, cli_env, "keys", "rotate", "lifecycle", "--dir", str(runtime_home / "keys"))
        assert rotated.returncode == 0, rotated.stderr
        new_key = load_signer(runtime_home / "keys" / "lifecycle" / "signing.key").key_id
        deadline = asyncio.get_running_loop().time() + 20
        while not any("signing with the rotated key" in line and new_key in line for line in lines.lines):
            assert asyncio.get_running_loop().time() < deadline, "\n".join(lines.lines[-20:])
            await asyncio.sleep(0.1)
        assert rt.supervisor is not None
        assert rt.supervisor.status("lifecycle").starts == 1  # no restart
    finally:
        await rt.stop()


async def test_rotate_issuer_retires_the_old_issuers_tokens_in_running_services(
    runtime_home: Path, free_base_port: int, symbi_exe: str, cli_env: dict[str, str]
) -> None:
    """`symbi keys rotate-issuer`: the running service refuses the old issuer's tokens (issuer_retired) without a
    restart, and accepts the home's admin token, issued anew by the new key."""
    options = RuntimeOptions(
        home=runtime_home, services=["lifecycle"], base_port=free_base_port, nats_port=None, env=cli_env
    )
    rt = LocalRuntime(options)
    await rt.start()
    try:
        await rt.wait_ready(timeout=60)
        old_token = (runtime_home / "operator.token").read_text().strip()
        url = f"{rt.url_of('lifecycle')}/openapi.json"  # authenticated, no policy decision (no policy service here)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(url, headers=bearer_header(old_token))).status_code == 200
            keys = str(runtime_home / "keys")
            rotated = await _symbi(symbi_exe, cli_env, "keys", "rotate-issuer", "--dir", keys)
            assert rotated.returncode == 0, rotated.stderr
            assert "published on REGISTRY: running services apply it now" in rotated.stdout
            new_token = (runtime_home / "operator.token").read_text().strip()
            assert new_token != old_token
            deadline = asyncio.get_running_loop().time() + 20
            while (r := await http.get(url, headers=bearer_header(old_token))).status_code == 200:
                assert asyncio.get_running_loop().time() < deadline, "the old issuer's token is still accepted"
                await asyncio.sleep(0.1)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["details"]["reason"] == "issuer_retired"
            assert (await http.get(url, headers=bearer_header(new_token))).status_code == 200
        assert rt.supervisor is not None
        assert rt.supervisor.status("lifecycle").starts == 1  # no restart
    finally:
        await rt.stop()
