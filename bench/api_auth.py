"""Latency that operator authentication + authorization add to one API call.

A throwaway nats-server and keyring; the real policy service app runs in this process (embedded
enforcement, the decision log on, the baseline policy set with its operator rules). The same call,
``GET /v1/policy-sets/baseline``, is made through two ASGI apps, alternately, one at a time:

* ours: the service's app from ``create_app``, with an admin's bearer token: the middleware checks the
  token (Ed25519 verified once, then from the cache; expiry and revocation on every call) and every
  route's dependency asks the enforcer for a Cedar decision, which goes to the decision log;
* baseline: the same router and the same service object in a bare FastAPI app with the same body-limit
  middleware and no authentication — the same call unauthenticated.

Both run in the same process and event loop with the same concurrency (one call at a time), interleaved
so drift hits both alike. Also printed: the guard's own cost (token check + decision) measured directly,
and a first (uncached) token check. Target: p99 added < 1 ms.

    uv run python bench/api_auth.py [--quick] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from types import SimpleNamespace

import _common
import httpx
from fastapi import FastAPI
from symbi_common.body_limit import BodyLimit
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import load_settings
from symbi_policy.api import router
from symbi_policy.main import build_app

PATH = "/v1/policy-sets/baseline"


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000


def bare_app(app: FastAPI) -> FastAPI:
    """The service's router and state without the operator guard (the unauthenticated baseline)."""
    bare = FastAPI()
    bare.add_middleware(BodyLimit, limit=app.state.runtime.settings.events.max_command_bytes)
    bare.include_router(router)
    bare.state.policy = app.state.policy
    bare.state.runtime = app.state.runtime
    return bare


async def run(calls: int) -> None:
    print(_common.machine_summary())
    async with _common.nats_server() as server:
        with _common.keyring() as keys_dir:
            env = {"SYMBI_NATS_URL": server.url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_LOG_LEVEL": "warning"}
            app = build_app(load_settings(env=env))
            async with app.router.lifespan_context(app):
                token = issue_local_token(keys_dir)
                secured = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://policy", headers=bearer_header(token)
                )
                plain = httpx.AsyncClient(transport=httpx.ASGITransport(app=bare_app(app)), base_url="http://policy")
                async with secured, plain:
                    assert (await plain.get(PATH)).status_code == 200
                    assert (await secured.get(PATH)).status_code == 200
                    assert (await secured.get(PATH, headers={"Authorization": ""})).status_code == 401
                    for _ in range(200):  # warm both paths
                        await secured.get(PATH)
                        await plain.get(PATH)
                    gc.collect()
                    ours: list[float] = []
                    base: list[float] = []
                    for _ in range(calls):
                        t = time.perf_counter()
                        r1 = await secured.get(PATH)
                        ours.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        r2 = await plain.get(PATH)
                        base.append(time.perf_counter() - t)
                        if r1.status_code != 200 or r2.status_code != 200:
                            raise SystemExit(f"unexpected answers {r1.status_code} / {r2.status_code}")

                    guard = app.state.operator_guard
                    route = SimpleNamespace(path="/v1/policy-sets/{set_id}", openapi_extra=None)  # what routing finds
                    guard_cost: list[float] = []
                    for _ in range(calls):
                        t = time.perf_counter()
                        claims = guard.authenticate(token)
                        await guard.authorize(claims, "GET", route, PATH)
                        guard_cost.append(time.perf_counter() - t)
                    fresh = [issue_local_token(keys_dir, name=f"op{i}") for i in range(200)]
                    t = time.perf_counter()
                    for f in fresh:
                        guard.authenticate(f)
                    first_check_ms = (time.perf_counter() - t) / len(fresh) * 1000
                    log = guard.enforcer.log
                    deadline = time.monotonic() + 30
                    while log.pending and time.monotonic() < deadline:  # noqa: ASYNC110 (all stored, none dropped)
                        await asyncio.sleep(0.05)
                    logged = log.stored

    o50, o99 = percentiles(ours)
    b50, b99 = percentiles(base)
    g50, g99 = percentiles(guard_cost)
    added50, added99 = o50 - b50, o99 - b99
    print(f"calls: {calls} each, interleaved, one at a time; decisions stored in the decision log: {logged}")
    print(f"with token + decision   p50={o50:.3f} ms  p99={o99:.3f} ms")
    print(f"unauthenticated         p50={b50:.3f} ms  p99={b99:.3f} ms")
    print(f"added                   p50={added50:.3f} ms  p99={added99:.3f} ms")
    print(f"guard alone (cached token check + Cedar decision + log) p50={g50:.3f} ms  p99={g99:.3f} ms")
    print(f"first check of a token (Ed25519 verify, uncached): {first_check_ms:.3f} ms")
    print(_common.result_line("api_auth", o99, b99, "ms", "p99_added<1", added99 < 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (1,000 calls each)")
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(run(1_000 if args.quick else args.calls))


if __name__ == "__main__":
    main()
