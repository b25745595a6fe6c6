"""Every route of every service's API, taken from its OpenAPI document, refuses callers without the right credential.

The policy service runs for real (it registers the baseline policy set, whose operator rules the
decisions are made against). Each service's app is built as ``symbi up`` would build it, and its
operator guard is started on the policy service's runtime: real tokens, real revocations in the
``OPERATOR_REVOCATIONS`` KV bucket, real Cedar decisions through the one enforcer. The route handlers
of the other services are not started, so for an allowed call the test checks only that it got past
authentication and authorization (not 401/403). A route added to any service is covered by this test
without anyone remembering to add it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from symbi_audit.main import build_app as build_audit
from symbi_common.crypto import Signer
from symbi_common.operator_auth import OPEN_PATHS
from symbi_common.operator_revocations import open_revocations_bucket
from symbi_common.operator_tokens import (
    OperatorClaims,
    default_operator_dir,
    encode_revocation,
    issue_token,
    load_issuer_key,
    sign_revocation,
)
from symbi_common.settings import Settings, load_settings
from symbi_context.main import build_app as build_context
from symbi_contracts.subjects import SERVICES
from symbi_lifecycle.main import build_app as build_lifecycle
from symbi_policy.main import build_app as build_policy
from symbi_sandbox_agent.main import build_app as build_sandbox_agent
from symbi_scheduler.main import build_app as build_scheduler

BUILDERS: dict[str, Callable[[Settings], FastAPI]] = {
    "lifecycle": build_lifecycle,
    "scheduler": build_scheduler,
    "audit": build_audit,
    "sandbox-agent": build_sandbox_agent,
    "context": build_context,
}
#: The roles that may call a route of each access level, and one that may not (``None``: every role may).
ALLOWED = {"read": "auditor", "write": "operator", "admin": "admin"}
REFUSED = {"read": None, "write": "auditor", "admin": "operator"}
#: A call that has not answered after this long is streaming its response: a refusal would be immediate.
STREAMING_S = 3.0
_PARAM = re.compile(r"\{([^}]+)\}")


def concrete(path: str) -> str:
    """The route's template with each parameter filled in (numbers where a number is expected)."""
    return _PARAM.sub(lambda m: "1" if m.group(1) in ("sequence", "size") else f"x-{m.group(1)}", path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, also those of included routers (kept as routers of their own since FastAPI 0.16x).

    The services include their routers without a prefix of their own (the prefix is the router's).
    """
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (inner := getattr(route, "original_router", None)) is not None:
            found.extend(api_routes(inner.routes))
    return found


def operations(app: FastAPI) -> list[tuple[str, str, str]]:
    """``(method, path template, access level)`` of every operation in ``app``'s OpenAPI document."""
    doc = app.openapi()
    return [
        (method.upper(), path, op["x-symbi-access"])
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict)
    ]


@pytest.fixture
def env(nats_url: str, keys_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_DATABASE_URL": "postgresql://unused.invalid/none",
        "SYMBI_SANDBOX__WORK_DIR": str(tmp_path / "work"),
        "SYMBIONT_VECTOR_DATA_PATH": str(tmp_path / "vectors"),
        "SYMBI_POLICY__LOG_INTERVAL_S": "0.05",
    }


@pytest.fixture
async def apps(env: dict[str, str]) -> AsyncIterator[dict[str, FastAPI]]:
    """Every service's app; the policy service's runs, the others' guards decide through its runtime."""
    policy = build_policy(load_settings(env=env))
    async with policy.router.lifespan_context(policy):
        runtime = policy.state.runtime
        apps = {"policy": policy}
        for name, build in BUILDERS.items():
            app = build(load_settings(env=env))
            await app.state.operator_guard.start(runtime)
            apps[name] = app
        yield apps


async def call(app: FastAPI, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc", headers=headers or {}) as http:
        body = None if method in ("GET", "HEAD") else b"{}"
        return await http.request(method, path, content=body, headers={"content-type": "application/json"})


def test_every_service_is_checked(apps: dict[str, FastAPI]) -> None:
    """A service added to the runtime (the catalogue of subjects lists them all) must be added here too."""
    assert set(apps) == set(SERVICES)


def test_every_route_is_documented_or_open(apps: dict[str, FastAPI]) -> None:
    """A route hidden from the OpenAPI document would escape the generated checks: only the open paths may be."""
    for name, app in apps.items():
        documented = {(m, p) for m, p, _ in operations(app)}
        assert documented, f"{name} documents no operation"
        for route in api_routes(app.router.routes):
            if route.path not in OPEN_PATHS:
                for method in route.methods:
                    assert (method, route.path) in documented, f"{name} {method} {route.path} is not in its OpenAPI"


async def test_every_route_needs_a_valid_token_and_the_right_role(
    apps: dict[str, FastAPI], issue_operator_token: Callable[..., str], keys_dir: Path
) -> None:
    foreign, _ = issue_token(Signer.generate(), name="mallory", role="admin", ttl_s=3600)
    past = int(time.time()) - 7200
    expired, _ = issue_token(
        load_issuer_key(default_operator_dir(keys_dir)), name="ann", role="admin", ttl_s=60, now=past
    )
    tokens = {role: issue_operator_token(role=role, name=f"{role}-1") for role in ("admin", "operator", "auditor")}
    revoked = issue_operator_token(role="admin", name="gone")
    await revoke(apps, keys_dir, revoked)

    failures: list[str] = []
    checked = 0

    async def check(
        app: FastAPI, method: str, path: str, where: str, case: tuple[str, dict[str, str] | None, set[int]]
    ) -> None:
        """One call with one case's credentials; what it got that it should not have goes to ``failures``."""
        nonlocal checked
        label, headers, expected = case
        try:
            r = await asyncio.wait_for(call(app, method, path, headers), timeout=STREAMING_S)
        except TimeoutError:  # a streaming response (e.g. the audit live stream): it got past the guard
            checked += 1
            if expected:
                failures.append(f"{where}: {label} → the call was let through, expected {expected}")
            return
        checked += 1
        if expected and r.status_code not in expected:
            failures.append(f"{where}: {label} → {r.status_code}, expected {expected}: {r.text[:200]}")
        if not expected and r.status_code in (401, 403):
            failures.append(f"{where}: {label} → {r.status_code}, expected to pass: {r.text[:200]}")
        if r.status_code in (401, 403) and r.json()["error"]["code"] not in (
            "unauthenticated",
            "policy_denied",
        ):
            failures.append(f"{where}: {label} → untyped body {r.text[:200]}")

    for name, app in apps.items():
        for method, template, access in operations(app):
            path = concrete(template)
            where = f"{name} {method} {template} ({access})"
            cases: list[tuple[str, dict[str, str] | None, set[int]]] = [
                ("no token", None, {401}),
                ("not bearer", {"Authorization": "Basic YWRtaW46YWRtaW4="}, {401}),
                ("garbage", bearer("not-a-token"), {401}),
                ("foreign issuer", bearer(foreign), {401}),
                ("expired", bearer(expired), {401}),
                ("revoked", bearer(revoked), {401}),
                ("admin", bearer(tokens["admin"]), set()),
                (ALLOWED[access], bearer(tokens[ALLOWED[access]]), set()),
            ]
            refused = REFUSED[access]
            if refused is not None:
                cases.append((f"{refused} (wrong role)", bearer(tokens[refused]), {403}))
            # A route's cases at once: a streaming route lets each allowed one through only after STREAMING_S.
            await asyncio.gather(*(check(app, method, path, where, case) for case in cases))
    assert not failures, "\n".join(failures)
    assert checked > 200  # every service's routes were exercised


async def test_open_paths_need_no_token(apps: dict[str, FastAPI]) -> None:
    for app in apps.values():
        assert (await call(app, "GET", "/healthz")).status_code == 200


async def test_unknown_paths_need_a_token(apps: dict[str, FastAPI], operator_headers: dict[str, str]) -> None:
    app = apps["lifecycle"]
    assert (await call(app, "GET", "/v1/nothing-here")).status_code == 401
    assert (await call(app, "GET", "/openapi.json")).status_code == 401
    assert (await call(app, "GET", "/v1/nothing-here", operator_headers)).status_code == 404


async def test_a_revocation_takes_effect_within_seconds(
    apps: dict[str, FastAPI], issue_operator_token: Callable[..., str], keys_dir: Path
) -> None:
    app = apps["policy"]
    token = issue_operator_token(role="auditor", name="soon-gone")
    assert (await call(app, "GET", "/v1/policy-sets", bearer(token))).status_code == 200
    started = time.monotonic()
    await revoke({"policy": app}, keys_dir, token, wait=False)
    while (r := await call(app, "GET", "/v1/policy-sets", bearer(token))).status_code == 200:
        assert time.monotonic() - started < 3, "the revocation did not take effect within 3 s"
        await asyncio.sleep(0.02)
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]


async def test_a_forged_revocation_is_ignored(
    apps: dict[str, FastAPI], issue_operator_token: Callable[..., str]
) -> None:
    """Only the issuer can revoke: an entry signed by another key (e.g. written by a service) changes nothing."""
    app = apps["policy"]
    token = issue_operator_token(role="auditor", name="kept")
    claims = msgspec.json.decode(_claims_part(token), type=OperatorClaims)
    kv = await open_revocations_bucket(app.state.runtime.js)
    await kv.put(claims.tid, encode_revocation(sign_revocation(Signer.generate(), claims.tid)))
    guard = app.state.operator_guard
    deadline = time.monotonic() + 3
    while guard.revocations.ignored == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert guard.revocations.ignored >= 1
    assert (await call(app, "GET", "/v1/policy-sets", bearer(token))).status_code == 200


async def test_denials_are_typed_and_logged(apps: dict[str, FastAPI], issue_operator_token: Callable[..., str]) -> None:
    app = apps["policy"]
    log = app.state.operator_guard.enforcer.log
    before = log.stored + log.pending
    r = await call(app, "POST", "/v1/policy-sets", bearer(issue_operator_token(role="auditor", name="aud")))
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "policy_denied"
    assert error["details"]["action"] == "api.admin"
    assert 'Operator::"aud"' in error["message"]
    assert log.stored + log.pending > before  # the denial went to the decision log


def _claims_part(token: str) -> bytes:
    import base64

    body = token.split(".")[0]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


async def revoke(apps: dict[str, FastAPI], keys_dir: Path, token: str, *, wait: bool = True) -> None:
    """Revoke ``token`` as ``symbi token revoke`` does (a signed entry in the revocations bucket); wait until
    every app's guard has it."""
    claims = msgspec.json.decode(_claims_part(token), type=OperatorClaims)
    issuer = load_issuer_key(default_operator_dir(keys_dir))
    kv = await open_revocations_bucket(apps["policy"].state.runtime.js)
    await kv.put(claims.tid, encode_revocation(sign_revocation(issuer, claims.tid)))
    deadline = time.monotonic() + 5
    for app in apps.values() if wait else ():
        while claims.tid not in app.state.operator_guard.revocations.revoked:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


def test_the_baseline_carries_the_operator_rules() -> None:
    from symbi_common.operator_auth import OPERATOR_POLICIES

    root = Path(__file__).resolve().parents[2]
    for path in (root / "examples/policies/baseline.cedar", root / "services/policy/src/symbi_policy/baseline.cedar"):
        assert OPERATOR_POLICIES in path.read_text(), path
