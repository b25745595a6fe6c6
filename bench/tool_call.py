"""MCP tool calls: the round trip of an agent's call through the gateway against the MCP SDK's own
``ClientSession.call_tool`` to the same server, in the same run; and SchemaPin verifications per second.

The server is the tests' toolbox (``mcp`` SDK ``MCPServer``, SchemaPin-signed) over streamable HTTP, a child
of this process. The daemon runs in this process with embedded Cedar policies (the baseline). A task per tier
runs Python with the SDK in a hardened sandbox and times, in alternating blocks of 50 calls:

* ``call``: ``agent.tools.call("box.add", …)`` — SDK, socket, the gateway's checks (approved pin, SchemaPin
  verification held, rate limit), the enforcer's decision with the arguments in the context, the MCP call,
  the result's digest, the ``execution.action`` event appended (sealed, signed, JetStream ack), the answer;
* ``hello``: the SDK's ``hello`` (the channel alone, for the decomposition).

Baseline: ``ClientSession.call_tool("add", …)`` from this process to the same server (its own session), timed
in blocks of 50 before and after each task. RESULT: ours = p50 of ``call`` under gVisor (tier2), baseline =
p50 of the direct call; target ours <= 1.5 x baseline + 2 ms.

    uv run python bench/tool_call.py [--quick] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from gateway import IMAGE, build_agent_image, run_task
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from schemapin.bundle import SchemaPinTrustBundle, create_bundled_discovery
from schemapin.crypto import KeyManager
from schemapin.utils import SchemaSigningWorkflow, create_well_known_response
from symbi_common.settings import load_settings
from symbi_contracts.tools.events import ToolServerRegistered
from symbi_sandbox_agent.egress.addresses import AddressPolicy
from symbi_sandbox_agent.main import build_app
from symbi_sandbox_agent.tools.canon import definition_of
from symbi_sandbox_agent.tools.url_egress import UrlEgress
from symbi_sandbox_agent.tools.verify import verify

ROOT = Path(__file__).resolve().parents[1]
TOOLBOX = ROOT / "services" / "sandbox-agent" / "tests" / "mcp_servers" / "toolbox.py"
HOST = "benchtools"
DOMAIN = "tools.example.com"

WORKLOAD = r"""
import json, sys, time
from symbi_agent import Agent
calls = int(sys.argv[1])
agent = Agent()
def call():
    assert agent.tools.call("box.add", {"a": 2, "b": 3})["structuredContent"] == {"result": 5}
modes = {"call": call, "hello": agent.hello}
samples = {k: [] for k in modes}
for f in modes.values():
    for _ in range(20):
        f()
for block in range(max(1, calls // 50)):
    for k in (list(modes) if block % 2 == 0 else list(reversed(modes))):
        f, s = modes[k], samples[k]
        for _ in range(50):
            t = time.perf_counter(); f(); s.append(time.perf_counter() - t)
print(json.dumps({k: v for k, v in samples.items()}))
"""


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "p50": s[len(s) // 2] * 1e3, "p99": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3}


async def direct(url: str, calls: int) -> list[float]:
    """``ClientSession.call_tool`` to the server, timed (seconds per call)."""
    samples = []
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        for _ in range(20):
            await session.call_tool("add", {"a": 2, "b": 3})
        for _ in range(calls):
            t = time.perf_counter()
            result = await session.call_tool("add", {"a": 2, "b": 3})
            samples.append(time.perf_counter() - t)
            assert result.structured_content == {"result": 5}
    return samples


async def run_tier(store: Any, reader: Any, nc: Any, tier: str, calls: int) -> dict[str, list[float]]:
    workload = {"image": IMAGE, "command": ["python3", "-c", WORKLOAD, str(calls)], "workdir": "/", "actions": True}
    result: dict[str, list[float]] = await run_task(store, reader, nc, host=HOST, tier=tier, workload=workload)
    return result


def verifications_per_s(signer: SchemaSigningWorkflow, trust: SchemaPinTrustBundle, n: int) -> float:
    definition = definition_of(
        {"name": "add", "description": "Add two integers.", "inputSchema": {"type": "object", "properties": {}}}
    )
    signature = signer.sign_schema(definition)
    t = time.perf_counter()
    for _ in range(n):
        assert verify("box", definition, signature, domain=DOMAIN, bundle=trust, pinned="").valid
    return n / (time.perf_counter() - t)


async def main(calls: int) -> None:
    print(_common.machine_summary())
    print(f"load average {os.getloadavg()[0]:.2f}; {calls} calls per mode per tier")
    private, public = KeyManager.generate_keypair()
    signer = SchemaSigningWorkflow(KeyManager.export_private_key_pem(private))
    well_known = create_well_known_response(KeyManager.export_public_key_pem(public), "Bench")
    trust = SchemaPinTrustBundle("1.2", "2026-01-01T00:00:00Z", [create_bundled_discovery(DOMAIN, well_known)], [])
    port = _common.free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    env_server = {
        **os.environ,
        "TOOLBOX_HTTP_PORT": str(port),
        "TOOLBOX_SIGNING_KEY": KeyManager.export_private_key_pem(private),
    }
    server_proc = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOLBOX), env=env_server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results: dict[str, dict[str, list[float]]] = {}
    baseline: list[float] = []
    try:
        async with _common.nats_server() as server:
            with _common.keyring() as keys_dir, tempfile.TemporaryDirectory(prefix="symbi-bench-tools-") as tmp:
                (Path(tmp) / "trust.json").write_text(json.dumps(trust.to_dict()))
                nc = await _common.connect(server.url)
                await _common.register_policy_sets(nc, keys_dir, {"baseline": _common.BASELINE_CEDAR.read_text()})
                env = _common.embedded_policy_env(
                    server.url,
                    keys_dir,
                    SYMBI_SANDBOX__HOST_ID=HOST,
                    SYMBI_SANDBOX__WORK_DIR=f"{tmp}/work",
                    SYMBI_SANDBOX__TOOLS_TRUST_BUNDLE=f"{tmp}/trust.json",
                    SYMBI_SANDBOX__TOOLS_RATE_PER_S="1000000",
                )
                daemon = build_app(load_settings(env=env))
                async with daemon.router.lifespan_context(daemon):
                    tools = daemon.state.sandbox.service.tools
                    # The toolbox listens on loopback, which the egress rules refuse unless allowed.
                    tools.egress = UrlEgress(AddressPolicy.parse(["127.0.0.1/32"]))
                    for _ in range(100):
                        try:
                            reg = ToolServerRegistered(server="box", transport="http", url=url, domain=DOMAIN)
                            await tools.register(reg)
                            break
                        except Exception:
                            await asyncio.sleep(0.1)
                    await tools.approve("box.add", by="bench")
                    store = await _common.make_store(nc, keys_dir, producer="scheduler")
                    reader = await _common.make_store(nc, keys_dir, producer="audit")
                    for tier in ("tier1", "tier2"):
                        baseline += await direct(url, calls // 2)
                        results[tier] = await run_tier(store, reader, nc, tier, calls)
                        baseline += await direct(url, calls // 2)
                await nc.drain()
    finally:
        server_proc.terminate()
        await asyncio.wait_for(server_proc.wait(), 10)
    base = stats(baseline)
    print(f"direct  ClientSession.call_tool p50 {base['p50']:.3f} ms  p99 {base['p99']:.3f} ms  (n={base['n']})")
    for tier, r in results.items():
        for mode in ("call", "hello"):
            m = stats(r[mode])
            print(f"{tier} {mode:5s} p50 {m['p50']:.3f} ms  p99 {m['p99']:.3f} ms  (n={m['n']})")
    per_s = verifications_per_s(signer, trust, 200 if calls <= 200 else 2000)
    print(f"SchemaPin verifications (offline, P-256): {per_s:.0f}/s")
    ours = stats(results["tier2"]["call"])["p50"]
    limit = 1.5 * base["p50"] + 2.0
    print(_common.result_line("tool_call", ours, base["p50"], "ms", f"<={limit:.3f}", ours <= limit))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=0)
    args = parser.parse_args()
    build_agent_image()
    asyncio.run(main(args.calls or (200 if args.quick else 1000)))
