"""Operator token revocations cannot be undone: a real nats-server with the deployment's users
(``natsauth.deployment_authorization_config()``, as ``deploy/nats/users.conf``), provisioned by ``admin``.

Once a revocation is in the ``OPERATOR_REVOCATIONS`` bucket, no credential removes or replaces it: a delete or
another value on its key is one more entry, a purge is refused by the server (for ``admin`` too), the message
delete and purge APIs are refused (by permission, and by the stream for ``admin``), and a guard that starts
afterwards still finds the token revoked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.main import app
from symbi_cli.nats_server import NatsServer
from symbi_cli.provisioning import provision_nats
from symbi_common.crypto import Signer, Verifier
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options, with_credentials
from symbi_common.natsauth import ADMIN, OPERATOR, deployment_authorization_config
from symbi_common.operator_revocations import Revocations, open_revocations_bucket
from symbi_common.operator_tokens import encode_revocation, issue_token, sign_revocation, verify_token
from symbi_common.stream_provisioning import provision_streams
from typer.testing import CliRunner

STREAM = "KV_OPERATOR_REVOCATIONS"
ISSUER = Signer.generate()


def _password(user: str) -> str:
    return f"pw-{user}"


@pytest.fixture
def deployed_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A nats-server with the deployment's authorization block (passwords from ``$NATS_<USER>_PASSWORD``),
    provisioned by ``admin``; its plain URL."""
    for user in (*SERVICE_SUBJECTS, OPERATOR, ADMIN):
        monkeypatch.setenv("NATS_" + user.upper().replace("-", "_") + "_PASSWORD", _password(user))
    conf = tmp_path / "users.conf"
    conf.write_text(deployment_authorization_config())
    with NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log", extra_args=["-c", str(conf)]) as server:
        provision_nats(with_credentials(server.url, ADMIN, _password(ADMIN)))
        yield server.url


async def _as(url: str, user: str, errors: list[str] | None = None) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    return await nats.connect(
        **server_options(with_credentials(url, user, _password(user))),
        allow_reconnect=False,
        connect_timeout=5,
        drain_timeout=5,
        error_cb=on_error,
    )


async def _revoked_by_a_starting_guard(js: object) -> set[str]:
    revocations = Revocations({ISSUER.key_id: Verifier(ISSUER.public_key)})
    await asyncio.wait_for(revocations.follow(js, once=True), timeout=10)
    return revocations.revoked


async def test_no_credential_removes_or_replaces_a_revocation(deployed_nats: str) -> None:
    _, claims = issue_token(ISSUER, name="ann", role="admin", ttl_s=600)
    revocation = encode_revocation(sign_revocation(ISSUER, claims.tid, reason="left"))
    errors: list[str] = []
    operator = await _as(deployed_nats, OPERATOR, errors)
    admin = await _as(deployed_nats, ADMIN)
    try:
        kv = await open_revocations_bucket(operator.jetstream(), create=False)
        first = await kv.put(claims.tid, revocation)
        # A delete and another value are more entries on the key, never a replacement.
        await kv.delete(claims.tid)
        await kv.put(claims.tid, b"not revoked after all")
        # A purge (a roll-up) is refused by the stream (the admin may not even write to the bucket).
        with pytest.raises(nats.js.errors.APIError, match="rollup"):
            await kv.purge(claims.tid)
        # The stream's delete and purge APIs: refused by permission for the operator and every service...
        api = [f"$JS.API.STREAM.{verb}.{STREAM}" for verb in ("MSG.DELETE", "PURGE", "UPDATE", "DELETE")]
        # Every user at once, each on its connection and checked against that connection's own error reports.
        errors.clear()

        async def all_refused_to(user: str) -> None:
            own = errors if user == OPERATOR else []
            client = operator if user == OPERATOR else await _as(deployed_nats, user, own)
            refused = [*api, *([] if user == OPERATOR else [f"$KV.OPERATOR_REVOCATIONS.{claims.tid}"])]
            try:  # (services only read the bucket)
                answers = await asyncio.gather(
                    *(client.request(s, b'{"seq":1}', timeout=1.0) for s in refused), return_exceptions=True
                )
                assert all(isinstance(a, nats.errors.TimeoutError) for a in answers), (user, answers)
                await asyncio.sleep(0.1)
                reported = " ".join(e.lower() for e in own if "permissions violation" in e.lower())
                assert all(f'"{s.lower()}"' in reported for s in refused), (user, own)
            finally:
                if client is not operator:
                    await client.close()

        await asyncio.gather(*(all_refused_to(user) for user in (OPERATOR, *SERVICE_SUBJECTS)))
        # ... and by the stream itself for the admin, who may call them.
        ajs = admin.jetstream()
        with pytest.raises(nats.js.errors.APIError):
            await ajs.delete_msg(STREAM, first)
        with pytest.raises(nats.js.errors.APIError):
            await ajs.purge_stream(STREAM)

        kept = await ajs.get_msg(STREAM, first)
        assert kept.data == revocation
        assert (await ajs.stream_info(STREAM)).state.messages == 3
        assert claims.tid in await _revoked_by_a_starting_guard(operator.jetstream())
    finally:
        await operator.close()
        await admin.close()


async def test_provisioning_makes_an_older_bucket_append_only_and_keeps_its_entries(nats_url: str) -> None:
    """A deployment whose bucket was made by an earlier version (one value per key, purges allowed)."""
    nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5, drain_timeout=5)
    try:
        js = nc.jetstream()
        await js.delete_stream(STREAM)
        old = await js.create_key_value(bucket="OPERATOR_REVOCATIONS", history=1)
        _, claims = issue_token(ISSUER, name="ann", role="admin", ttl_s=600)
        await old.put(claims.tid, encode_revocation(sign_revocation(ISSUER, claims.tid)))

        await provision_streams(js)

        config = (await js.stream_info(STREAM)).config
        assert (config.deny_delete, config.deny_purge, config.allow_rollup_hdrs) == (True, True, False)
        kv = await open_revocations_bucket(js, create=False)
        await kv.put(claims.tid, b"replaced?")
        with pytest.raises(nats.js.errors.APIError):
            await kv.purge(claims.tid)
        assert claims.tid in await _revoked_by_a_starting_guard(js)
    finally:
        await nc.drain()


def test_token_list_shows_a_token_revoked_after_its_entry_was_deleted(keys_dir: Path, nats_url: str) -> None:
    """``symbi token list`` counts revocations as the services do: a delete written after one changes nothing."""
    home = str(keys_dir.parent)
    runner = CliRunner(env={"COLUMNS": "200", "SYMBI_HOME": None, "SYMBI_OPERATOR_TOKEN": None})
    issued = runner.invoke(app, ["token", "issue", "--name", "bob", "--role", "operator", "--home", home])
    tid = verify_token(issued.stdout.strip().splitlines()[-1], KeyRegistry.load(keys_dir).operator_issuers()).tid
    revoked = runner.invoke(app, ["token", "revoke", tid, "--home", home, "--nats-url", nats_url])
    assert revoked.exit_code == 0, revoked.output

    async def delete() -> None:
        nc = await nats.connect(nats_url, allow_reconnect=False, connect_timeout=5, drain_timeout=5)
        try:
            await (await open_revocations_bucket(nc.jetstream(), create=False)).delete(tid)
        finally:
            await nc.drain()

    asyncio.run(delete())
    listed = runner.invoke(app, ["token", "list", "--home", home, "--nats-url", nats_url])
    assert listed.exit_code == 0, listed.output
    (row,) = [line for line in listed.output.splitlines() if tid in line]
    assert "revoked" in row, listed.output
