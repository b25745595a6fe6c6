"""Agent registration latency over the HTTP API, from request to the reply that the agent is Ready.

Set-up as in production: a throwaway nats-server (JetStream, file storage), a PostgreSQL server
(pgserver) with a fresh database, a fresh keyring, and the lifecycle service as its own process
(``python -m symbi_lifecycle``) next to the policy service (``python -m symbi_policy``, which registers the
baseline policy set the lifecycle's embedded decision point decides against). One HTTP client with keep-alive sends requests one at a time.

* ours: ``POST /v1/agents`` with a realistic config. The reply comes after the service appended
  ``agent.registered`` (Initializing), validated the config, asked its embedded policy decision point
  about ``agent.register`` and appended ``agent.ready`` with the decision — each event sealed (encrypt +
  sign + hash-chain) and appended conditionally to JetStream.
* baseline: ``GET /healthz`` on the same server and connection: the HTTP floor (routing, JSON,
  middleware, loopback TCP) with no work behind it.

Requests alternate baseline / ours after a warm-up, so both see the same conditions.

    uv run python bench/register.py [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import _common
import httpx
from symbi_cli.postgres_server import PostgresServer

TARGET_P99_MS = 50.0
CONFIG = {
    "name": "summariser",
    "version": "1.4.2",
    "description": "Summarises documents fetched from an allow-listed API",
    "capabilities": ["web.fetch", "text.summarise"],
    "resources": {"memory_mb": 512, "cpu_cores": 1, "disk_io_mbps": 50, "network_io_mbps": 10},
    "security_tier": "tier2",
    "network_access": ["api.example.com"],
    "external_apis": ["https://api.example.com/v1"],
}


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    with (
        tempfile.TemporaryDirectory(prefix="symbi-bench-pg-") as tmp,
        PostgresServer(Path(tmp) / "data", cleanup="delete") as pg,
    ):
        yield pg.create_database("lifecycle_bench")


@contextlib.asynccontextmanager
async def lifecycle(nats_url: str, database_url: str, keys_dir: Path) -> AsyncIterator[str]:
    """The policy and lifecycle services as child processes; yields the lifecycle's URL once both are ready."""
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_DATABASE_URL": database_url, "SYMBI_KEYS_DIR": str(keys_dir)}
    async with _common.service_process("symbi_policy", env), _common.service_process("symbi_lifecycle", env) as svc:
        yield svc.url


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(url: str, warmup: int, requests: int) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    base: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=_common.AUTH) as http:
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            r = await http.get("/healthz")
            t1 = time.perf_counter()
            r.raise_for_status()
            reg = await http.post("/v1/agents", json={"agent_id": f"bench-{i:06d}", "config": CONFIG})
            t2 = time.perf_counter()
            if reg.status_code != 201 or reg.json()["state"] != "Ready":
                raise SystemExit(f"registration {i} failed: {reg.status_code} {reg.text}")
            if i >= warmup:
                base.append((t1 - t0) * 1000)
                ours.append((t2 - t1) * 1000)
    return ours, base


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (a few seconds)")
    ap.add_argument("--requests", type=int, help="measured registrations (default 2000, quick 200)")
    args = ap.parse_args()
    requests = args.requests or (200 if args.quick else 2000)
    warmup = max(20, requests // 10)

    print(_common.machine_summary())
    with _common.keyring() as keys_dir, postgres() as database_url:
        async with _common.nats_server() as nats, lifecycle(nats.url, database_url, keys_dir) as url:
            ours, base = await measure(url, warmup, requests)

    p50, p99 = pct(ours, 50), pct(ours, 99)
    b50, b99 = pct(base, 50), pct(base, 99)
    print(f"requests={requests} warmup={warmup} sequential, one keep-alive connection")
    print(f"register p50={p50:.2f} ms p99={p99:.2f} ms mean={statistics.fmean(ours):.2f} ms max={max(ours):.2f} ms")
    print(f"healthz  p50={b50:.2f} ms p99={b99:.2f} ms mean={statistics.fmean(base):.2f} ms")
    print(_common.result_line("register", p99, b99, "ms", f"p99<{TARGET_P99_MS:g}", p99 < TARGET_P99_MS))


if __name__ == "__main__":
    asyncio.run(main())
