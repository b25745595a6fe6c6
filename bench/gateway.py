"""The agent channel: SDK call round trips from inside a sandbox through its mounted Unix socket, per tier.

One task per tier runs Python with the SDK (image from ``deploy/host/agent-image.sh``) in a hardened sandbox
of the real daemon (in this process, embedded Cedar policies: the baseline plus one forbid). Inside, the
workload times, in alternating blocks of 50 calls:

* ``raw`` (baseline): a request-sized line to a trivial echo server listening on a second Unix socket in the
  same mounted directory, served by the same event loop as the gateway — the channel's floor.
* ``hello``: the SDK's ``hello`` (SDK, framing, protocol parsing; no decision, nothing recorded).
* ``denied``: ``memory.store`` that the policy forbids: the full gateway path of an action — schema check,
  the enforcer's decision, the ``execution.action`` event appended (sealed, signed, JetStream ack) and the
  typed error back. No performing service.
* ``recall``: ``memory.recall`` allowed and performed by the context service (in this process too): the
  above plus a NATS request to the context service, its own decision, embedding and vector search.

Also calls/s with 16 requests in flight (``AsyncAgent``) for ``denied``. The RESULT line: ours = p50 of
``denied`` under gVisor (tier2), baseline = p50 of ``raw`` under gVisor, target p50 < 2 ms.

    uv run python bench/gateway.py [--quick] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import _common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "plugins"))

from symbi_common.settings import load_settings  # noqa: E402
from symbi_context.main import build_app as build_context_app  # noqa: E402
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, output_chunks  # noqa: E402
from symbi_fixtures.agent_images import agent_image_tag, build_agent_image  # noqa: E402
from symbi_sandbox_agent.config import channel_root  # noqa: E402
from symbi_sandbox_agent.main import build_app  # noqa: E402
from symbi_sandbox_agent.spec import channel_dir, container_name  # noqa: E402

#: The agent image (deploy/host/agent-image.sh), tagged by what it is made of; built by ``build_agent_image``.
IMAGE = agent_image_tag()
HOST = "benchgw"
AGENT = "agent-bench"
LIMITS = {"memory_mb": 256, "cpu_cores": 1.0, "disk_io_mbps": 50, "network_io_mbps": 10, "execution_timeout_s": 600}
NO_SECRETS = """@id("no-secret-memories")
forbid(principal, action == Action::"memory.write", resource)
when { context has classification && context.classification == "secret" };
"""

WORKLOAD = r"""
import asyncio, json, os, socket, sys, time
from symbi_agent import Agent, AsyncAgent, Denied
calls = int(sys.argv[1])
echo_path = "/symbi/run/echo.sock"
for _ in range(400):
    if os.path.exists(echo_path):
        break
    time.sleep(0.025)
raw = socket.socket(socket.AF_UNIX)
raw.connect(echo_path)
rf = raw.makefile("rwb")
line = json.dumps({"v": 1, "id": 1, "op": "memory.store", "args": {"text": "x"}, "context": {"classification": "secret"}}).encode() + b"\n"
def echo():
    rf.write(line); rf.flush(); rf.readline()
agent = Agent()
def hello():
    agent.hello()
def denied():
    try:
        agent.memory.store("x", context={"classification": "secret"})
    except Denied:
        return
    raise SystemExit("not denied")
def recall():
    assert agent.memory.recall("launch", collection="notes")["memories"]
agent.memory.store("the launch is Friday", collection="notes")
modes = {"raw": echo, "hello": hello, "denied": denied, "recall": recall}
samples = {k: [] for k in modes}
for f in modes.values():
    for _ in range(20):
        f()
for block in range(max(1, calls // 50)):
    for k in (list(modes) if block % 2 == 0 else list(reversed(modes))):
        f, s = modes[k], samples[k]
        for _ in range(50):
            t = time.perf_counter(); f(); s.append(time.perf_counter() - t)
def stats(s):
    s = sorted(s)
    return {"n": len(s), "p50": s[len(s) // 2] * 1e3, "p99": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3,
            "per_s": len(s) / sum(s)}
out = {k: stats(v) for k, v in samples.items()}
async def burst(n, width=16):
    async with AsyncAgent() as b:
        async def one():
            try:
                await b.memory.store("x", context={"classification": "secret"})
            except Denied:
                pass
        async def lane(k):
            for _ in range(k):
                await one()
        t = time.perf_counter()
        await asyncio.gather(*(lane(n // width) for _ in range(width)))
        return (n // width) * width / (time.perf_counter() - t)
out["denied_concurrent_per_s"] = asyncio.run(burst(max(160, calls)))
print(json.dumps(out))
"""


async def echo_server(directory: str) -> asyncio.AbstractServer:
    """A trivial line echo on a second socket in the sandbox's mounted channel directory."""
    path = Path(directory)
    for _ in range(400):
        if await asyncio.to_thread(os.path.isdir, directory):
            break
        await asyncio.sleep(0.01)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()

    sock = str(path / "echo.sock")
    server = await asyncio.start_unix_server(serve, path=sock)
    os.chown(sock, 65534, 65534)
    return server


async def run_task(
    store: Any,
    reader: Any,
    nc: Any,
    *,
    host: str,
    tier: str,
    workload: dict[str, Any],
    serving: Callable[[str], contextlib.AbstractAsyncContextManager[object]] | None = None,
) -> Any:
    """Runs ``workload`` as one task on the sandbox-agent of ``host`` (its task events appended as the scheduler
    would, then its work item) and returns the JSON the workload printed; ``serving(task_id)`` is entered while
    the task runs (e.g. a socket the workload reaches)."""
    task_id = uuid.uuid4().hex[:16]
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Any) -> None:
        kind = (msg.headers or {}).get("Symbi-Event-Type", "")
        if kind in _common.TERMINAL and not done.done():
            done.set_result(kind)

    sub = await nc.subscribe(f"evt.execution.{task_id}", cb=on_event)
    await _common.place_task(store, nc, task_id, agent_id=AGENT, host=host, tier=tier, workload=workload, limits=LIMITS)
    try:
        async with serving(task_id) if serving is not None else contextlib.nullcontext():
            kind = await asyncio.wait_for(done, 900)
    finally:
        await sub.unsubscribe()
    events = [r.event for r in await reader.load("execution", task_id, EXECUTION_CODEC)]
    stdout = b"".join(c.data for e in events for c in output_chunks(e) if c.stream == "stdout")
    if kind != "execution.exited" or not stdout:
        stderr = b"".join(c.data for e in events for c in output_chunks(e) if c.stream == "stderr")
        raise SystemExit(f"{tier} task ended with {kind}: {stderr[-2000:].decode(errors='replace')}")
    return json.loads(stdout)


@contextlib.asynccontextmanager
async def echo_serving(task_id: str) -> AsyncIterator[object]:
    echo = await echo_server(channel_dir(channel_root(), HOST, container_name(HOST, task_id, 1)))
    try:
        yield echo
    finally:
        echo.close()


async def run_tier(store: Any, reader: Any, nc: Any, tier: str, calls: int) -> dict[str, Any]:
    workload = {"image": IMAGE, "command": ["python3", "-c", WORKLOAD, str(calls)], "workdir": "/", "actions": True}
    result: dict[str, Any] = await run_task(
        store, reader, nc, host=HOST, tier=tier, workload=workload, serving=echo_serving
    )
    return result


async def main(calls: int) -> None:
    print(_common.machine_summary())
    print(f"load average {os.getloadavg()[0]:.2f}; {calls} calls per mode per tier")
    results: dict[str, dict[str, Any]] = {}
    async with _common.nats_server() as server:
        with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-gw-") as tmp:
            nc = await _common.connect(server.url)
            sets = {"baseline": _common.BASELINE_CEDAR.read_text(), "no-secrets": NO_SECRETS}
            await _common.register_policy_sets(nc, keys_dir, sets)
            env = {"SYMBI_NATS_URL": server.url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_LOG_LEVEL": "warning"}
            context = build_context_app(
                load_settings(
                    env={**env, "SYMBI_POLICY__ENFORCEMENT": "allow-all", "SYMBIONT_VECTOR_DATA_PATH": f"{tmp}/v"}
                )
            )
            daemon = build_app(
                load_settings(
                    env=_common.embedded_policy_env(
                        server.url, keys_dir, SYMBI_SANDBOX__HOST_ID=HOST, SYMBI_SANDBOX__WORK_DIR=f"{tmp}/work"
                    )
                )
            )
            async with context.router.lifespan_context(context), daemon.router.lifespan_context(daemon):
                store = await _common.make_store(nc, keys_dir, producer="scheduler")
                reader = await _common.make_store(nc, keys_dir, producer="audit")
                for tier in ("tier1", "tier2"):
                    results[tier] = await run_tier(store, reader, nc, tier, calls)
            await nc.drain()
    for tier, r in results.items():
        for mode in ("raw", "hello", "denied", "recall"):
            m = r[mode]
            print(f"{tier} {mode:7s} p50 {m['p50']:.3f} ms  p99 {m['p99']:.3f} ms  {m['per_s']:.0f} calls/s sequential")
        print(f"{tier} denied, 16 in flight: {r['denied_concurrent_per_s']:.0f} calls/s")
    ours, base = results["tier2"]["denied"]["p50"], results["tier2"]["raw"]["p50"]
    print(_common.result_line("gateway", ours, base, "ms", "<2", ours < 2.0))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=0)
    args = parser.parse_args()
    build_agent_image()
    asyncio.run(main(args.calls or (200 if args.quick else 1000)))
