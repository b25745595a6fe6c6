"""The HTTP guard follows the key registry's operator-token issuers while the service runs (real nats-server, real
root-signed registry versions on the ``REGISTRY`` stream, a real service app).

A retired or revoked issuer's tokens are refused from the version on, cached ones too; a new issuer's are accepted
without a restart; a registry follower that lags is caught up by the guard; and while the guard cannot confirm its
registry is current it refuses every call (503) instead of trusting issuers that may have been retired.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_server import NatsServer
from symbi_common.crypto import Signer, Verifier
from symbi_common.keyfiles import ROOT_KEY_FILE, publish_registry
from symbi_common.keyring import RETIRED, REVOKED, KeyRegistry, RegistryDocument, load_signer
from symbi_common.operator_revocations import Revocations
from symbi_common.operator_tokens import (
    default_operator_dir,
    encode_revocation,
    issue_token,
    load_issuer_key,
    sign_revocation,
)
from symbi_common.registry_changes import with_operator_issuer, with_operator_issuer_status
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app
from symbi_common.settings import load_settings
from symbi_fixtures.key_rotation import eventually, publish_key_files, runtime_env


@pytest.fixture
async def served(nats_url: str, keys_dir: Path, provisioned: NatsClient) -> AsyncIterator[FastAPI]:
    """A running service app (its policy decisions allow all; operator tokens are checked as always) with one
    route, ``GET /v1/ping``; its guard checks the registry every 0.2 s."""
    await publish_key_files(provisioned, keys_dir)  # as `symbi up` does before any service starts
    env = runtime_env(nats_url, keys_dir, SYMBI_POLICY__ENFORCEMENT="allow-all")
    runtime = ServiceRuntime("lifecycle", load_settings(env=env), use_database=False)
    router = APIRouter()

    @router.get("/v1/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    app = create_app(runtime, title="issuers", routers=[router])
    app.state.operator_guard.registry_check_s = 0.2
    async with app.router.lifespan_context(app):
        yield app


async def ping(app: FastAPI, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
        return await http.get("/v1/ping", headers={"Authorization": f"Bearer {token}"})


async def next_version(nc: NatsClient, keys_dir: Path, change: Callable[[RegistryDocument], RegistryDocument]) -> int:
    """The next registry version (``change`` of the current one), root-signed and published as `symbi keys` does."""
    root = load_signer(default_operator_dir(keys_dir) / ROOT_KEY_FILE)
    document = change(KeyRegistry.load(keys_dir).document)
    publish_registry(keys_dir, root, document)
    assert await publish_key_files(nc, keys_dir) == document.version
    return document.version


def token_of(issuer: Signer, name: str) -> str:
    token, _ = issue_token(issuer, name=name, role="admin", ttl_s=600)
    return token


async def test_a_revoked_issuer_is_refused_at_once_and_a_new_one_accepted_without_a_restart(
    served: FastAPI, provisioned: NatsClient, keys_dir: Path
) -> None:
    runtime: ServiceRuntime = served.state.runtime
    first = load_issuer_key(default_operator_dir(keys_dir))
    second = Signer.generate()
    old, new = token_of(first, "ann"), token_of(second, "bob")
    assert (await ping(served, old)).status_code == 200  # verified once, then cached
    refused = await ping(served, new)
    assert refused.status_code == 401
    assert refused.json()["error"]["details"]["reason"] == "unknown_issuer"

    added = await next_version(provisioned, keys_dir, lambda d: with_operator_issuer(d, second.public_key))
    await eventually(lambda: runtime.registry.version == added, "the service has the version adding an issuer")
    assert (await ping(served, new)).status_code == 200

    revoked = await next_version(provisioned, keys_dir, lambda d: with_operator_issuer_status(d, first.key_id, REVOKED))
    await eventually(lambda: runtime.registry.version == revoked, "the service has the version revoking the issuer")
    refused = await ping(served, old)  # cached under the earlier version: verified again
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "unauthenticated"
    assert error["details"]["reason"] == "issuer_revoked"
    assert first.key_id in error["message"]
    assert (await ping(served, token_of(first, "fresh"))).status_code == 401
    assert (await ping(served, new)).status_code == 200


async def test_the_guard_catches_up_a_lagging_registry_follower(
    served: FastAPI, provisioned: NatsClient, keys_dir: Path
) -> None:
    """The follower stopped: the guard's own catch-up with the ``REGISTRY`` stream retires the issuer."""
    (follow,) = [t for t in asyncio.all_tasks() if t.get_name() == "keys:follow"]
    follow.cancel()
    await asyncio.gather(follow, return_exceptions=True)
    first = load_issuer_key(default_operator_dir(keys_dir))
    token = token_of(first, "ann")
    assert (await ping(served, token)).status_code == 200

    await next_version(provisioned, keys_dir, lambda d: with_operator_issuer_status(d, first.key_id, RETIRED))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (answer := await ping(served, token)).status_code == 200:
        assert loop.time() < deadline, "a retired issuer's token is still accepted 5 s after the version"
        await asyncio.sleep(0.05)
    assert answer.status_code == 401
    assert answer.json()["error"]["details"]["reason"] == "issuer_retired"


async def test_calls_are_refused_while_the_registry_cannot_be_confirmed_current(
    served: FastAPI, nats_server: NatsServer, keys_dir: Path
) -> None:
    guard = served.state.operator_guard
    guard.registry_stale_s = 1.0
    token = token_of(load_issuer_key(default_operator_dir(keys_dir)), "ann")
    assert (await ping(served, token)).status_code == 200
    nats_server.send_signal(signal.SIGSTOP)  # NATS does not answer: no catch-up can succeed
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8
        while (answer := await ping(served, token)).status_code == 200:
            assert loop.time() < deadline, "calls are still served 8 s after the registry could last be confirmed"
            await asyncio.sleep(0.1)
        assert answer.status_code == 503
        assert answer.json()["error"]["details"]["reason"] == "registry_unconfirmed"
    finally:
        nats_server.send_signal(signal.SIGCONT)
    deadline = loop.time() + 15
    while (await ping(served, token)).status_code != 200:
        assert loop.time() < deadline, "calls are not served again once NATS answers"
        await asyncio.sleep(0.1)


def test_a_revocation_by_an_issuer_the_registry_names_later_counts_once_it_does() -> None:
    issuer = Signer.generate()
    _, claims = issue_token(issuer, name="ann", role="admin", ttl_s=60)
    revocations = Revocations({})
    revocations.apply(claims.tid, encode_revocation(sign_revocation(issuer, claims.tid)))
    assert revocations.revoked == set()
    revocations.use_issuers({issuer.key_id: Verifier(issuer.public_key)})
    assert revocations.revoked == {claims.tid}
