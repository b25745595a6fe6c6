"""Memory per registered idle agent in the lifecycle service process (target <= 1 MB per agent).

Set-up as in production: a throwaway nats-server (JetStream), a PostgreSQL server (pgserver), a fresh
keyring, and the lifecycle service as its own process (``python -m symbi_lifecycle``, policy
enforcement ``allow-all`` so no policy service is needed). Agents are registered over the HTTP API
with a realistic DSL definition (``examples/agents/data-pipeline.symbi``: policies, schedule, memory
settings) and left idle.

* ours: the growth of the service's resident set size (``VmRSS``) per agent over a second batch of N
  registrations (after a warm-up and a first batch of N, which also use up the memory the allocator
  kept from start-up), after a settling pause, divided by N.
* baseline: the resident set size of the same service process with no agents (the empty process),
  both in KB, so the ratio says what share of an empty service one idle agent costs.

    uv run python bench/agent_memory.py [--quick] [--agents N] [--runtime]

``--runtime``: the whole runtime as ``symbi up`` starts it (six services, real policy enforcement, agents
activated in the policy service and followed by every service); the same batches, and the growth of every
service's resident set size per agent. The RESULT line is then the sum over the six services.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import _common
import httpx
from symbi_cli.postgres_server import PostgresServer

TARGET_KB = 1024.0
DEFINITION = (Path(__file__).parents[1] / "examples" / "agents" / "data-pipeline.symbi").read_text()
CONCURRENCY = 8
WARMUP = 20


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    with (
        tempfile.TemporaryDirectory(prefix="symbi-bench-pg-") as tmp,
        PostgresServer(Path(tmp) / "data", cleanup="delete") as pg,
    ):
        yield pg.create_database("memory_bench")


@contextlib.asynccontextmanager
async def lifecycle(nats_url: str, database_url: str, keys_dir: Path) -> AsyncIterator[tuple[str, int]]:
    """The lifecycle service as a child process; yields its URL and pid once it is ready."""
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_DATABASE_URL": database_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
    }
    async with _common.service_process("symbi_lifecycle", env) as svc:
        yield svc.url, svc.pid


async def register(url: str, prefix: str, count: int, headers: dict[str, str] | None = None) -> None:
    """Register ``count`` agents, ``CONCURRENCY`` at a time; every one must come back Ready."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            r = await http.post("/v1/agents", json={"agent_id": f"{prefix}-{i}", "definition": DEFINITION})
            if r.status_code != 201 or r.json()["state"] != "Ready":
                raise SystemExit(f"registration {i} failed: {r.status_code} {r.text[:500]}")

    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers or _common.AUTH) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))


async def whole_runtime(agents: int) -> None:
    """Every service's RSS growth per idle agent, the runtime as ``symbi up`` runs it."""
    from e2e import require_every_service, runtime_options
    from symbi_cli.credentials import auth_headers
    from symbi_cli.runtime import LocalRuntime

    with tempfile.TemporaryDirectory(prefix="symbi-bench-mem-") as tmp:
        rt = LocalRuntime(runtime_options(Path(tmp), "mem-host"))
        try:
            await rt.start()
            await rt.wait_ready(timeout=120)
            require_every_service(rt)
            assert rt.supervisor is not None
            pids = rt.supervisor.pids()
            url, headers = rt.url_of("lifecycle"), auth_headers(rt.home)

            def sample() -> dict[str, int]:
                return {name: rss_kb(pid) for name, pid in pids.items()}

            await asyncio.sleep(2.0)
            empty = sample()
            await register(url, "warm", WARMUP, headers)
            started = time.perf_counter()
            await register(url, "first", agents, headers)
            await asyncio.sleep(5.0)  # every service follows the new agents and their policies
            first = sample()
            await register(url, "second", agents, headers)
            elapsed = time.perf_counter() - started
            await asyncio.sleep(5.0)
            after = sample()
        finally:
            await rt.stop()
    print(f"agents=2x{agents} (after {WARMUP} warm-up registrations), concurrency={CONCURRENCY}, {elapsed:.1f} s")
    per_service = {name: (after[name] - first[name]) / agents for name in after}
    for name in sorted(per_service, key=per_service.__getitem__, reverse=True):
        print(f"  {name:14} RSS empty {empty[name]:7d} KB, per idle agent (second batch) {per_service[name]:7.1f} KB")
    total = sum(per_service.values())
    print(f"per idle agent, the six services together: {total:.1f} KB")
    print(
        _common.result_line(
            "agent_memory_runtime", total, float(sum(empty.values())), "KB", f"<={TARGET_KB:g}", total <= TARGET_KB
        )
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (200 agents)")
    ap.add_argument("--agents", type=int, help="agents to register (default 1000, quick 200)")
    ap.add_argument("--runtime", action="store_true", help="every service of the runtime, not lifecycle alone")
    args = ap.parse_args()
    agents = args.agents or (200 if args.quick else 1000)

    print(_common.machine_summary())
    if args.runtime:
        await whole_runtime(agents)
        return
    with _common.keyring() as keys_dir, postgres() as database_url:
        async with _common.nats_server() as nats, lifecycle(nats.url, database_url, keys_dir) as (url, pid):
            await asyncio.sleep(1.0)
            empty = rss_kb(pid)
            await register(url, "warm", WARMUP)
            await asyncio.sleep(1.0)
            warm = rss_kb(pid)
            started = time.perf_counter()
            await register(url, "first", agents)
            await asyncio.sleep(3.0)  # let background work (projection, sweeps) settle
            first = rss_kb(pid)
            await register(url, "second", agents)
            elapsed = time.perf_counter() - started
            await asyncio.sleep(3.0)
            after = rss_kb(pid)

    per_agent = (after - first) / agents
    print(f"agents=2x{agents} (after {WARMUP} warm-up registrations), concurrency={CONCURRENCY}, {elapsed:.1f} s")
    print(f"RSS empty={empty} KB warm={warm} KB after first batch={first} KB after second={after} KB")
    print(f"per idle agent: first batch {(first - warm) / agents:.1f} KB, second batch {per_agent:.1f} KB")
    print(
        _common.result_line("agent_memory", per_agent, float(empty), "KB", f"<={TARGET_KB:g}", per_agent <= TARGET_KB)
    )


if __name__ == "__main__":
    asyncio.run(main())
