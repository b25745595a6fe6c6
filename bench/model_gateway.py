"""The model gateway's added latency: a chat completion through ``ModelGateway.handle`` (as the egress proxy
calls it for ``models.symbi.internal``) against the same request straight to the provider, in the same run.

The provider is the tests' OpenAI-speaking HTTPS server (``symbi_fixtures.model_upstream``, a test CA) in a
child process. The daemon runs in this process with embedded Cedar policies (the baseline with its budget
rules, and a permit for the model); the gateway is built as the daemon builds it, with a dict-backed secrets
store. Each call through the gateway: the caller's task (cached), the estimate, the Cedar decision with the
day's budget in its context, the ``budget.reserved`` event appended with its expected version (sealed, signed,
JetStream ack), the provider call on a pooled keep-alive connection with the credential injected, the answer
(the reconciliation is appended after it, off the caller's path). Direct: an ``httpx.AsyncClient`` with the
same CA and keep-alive. Calls alternate one by one, concurrency 1.

Two figures: a whole non-streamed completion, and the time to the first chunk of a streamed one. RESULT:
ours = p50 through the gateway (non-streamed), baseline = p50 direct; target: p50 added <= 2 ms for both.

    uv run python bench/model_gateway.py [--quick] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _common
import httpx
import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "plugins"))

from symbi_common.decisions import DecisionRecord  # noqa: E402
from symbi_common.sealing import ChainTip  # noqa: E402
from symbi_common.settings import load_settings  # noqa: E402
from symbi_common.settings_sandbox import ModelsSettings  # noqa: E402
from symbi_contracts.lifecycle.config import AgentBudget, ResourceLimits, Workload  # noqa: E402
from symbi_contracts.scheduler.events import CODEC as TASKS  # noqa: E402
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted  # noqa: E402
from symbi_fixtures.model_upstream import make_ca_and_server_cert  # noqa: E402
from symbi_sandbox_agent.egress.internal import Caller, InternalRequest  # noqa: E402
from symbi_sandbox_agent.main import build_app  # noqa: E402
from symbi_sandbox_agent.models.wiring import model_gateway  # noqa: E402

HOST = "bench-models"
KEY = "sk-bench-" + uuid.uuid4().hex
POLICY = 'permit(principal == Agent::"agent-1", action == Action::"model.invoke", resource == Model::"bench/small");'
BODY = {"model": "bench/small", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}


class Secrets:
    async def get(self, name: str) -> bytes:
        return KEY.encode()


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered), "p99": ordered[int(0.99 * (len(ordered) - 1))], "n": len(ordered)}


async def assign(store: Any) -> str:
    task_id = f"t{uuid.uuid4().hex[:12]}"
    limits = ResourceLimits(memory_mb=64, cpu_cores=1.0, disk_io_mbps=10, network_io_mbps=1, execution_timeout_s=60)
    events = [
        TaskSubmitted(agent_id="agent-1", input=b"", priority="normal"),
        TaskAssigned(
            host_id=HOST, tier="tier1", risk_score=0.0, risk_factors={}, workload=Workload(image="x"),
            limits=limits, attempt=1, decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
            budget=AgentBudget(tokens_per_day=10**12, micro_usd_per_day=10**12),
        ),
    ]  # fmt: skip
    await store.append("task", task_id, events, TASKS, expected=ChainTip())
    return task_id


async def main(calls: int) -> None:
    print(_common.machine_summary())
    print(f"load average {os.getloadavg()[0]:.2f}; {calls} calls per mode")
    port = _common.free_port()
    samples: dict[str, list[float]] = {"direct": [], "ours": [], "direct_ttft": [], "ours_ttft": []}
    with tempfile.TemporaryDirectory(prefix="symbi-bench-models-") as tmp:
        ca, _, _ = make_ca_and_server_cert(Path(tmp) / "tls")
        provider = str(ROOT / "tests/plugins/symbi_fixtures/model_upstream.py")
        upstream = await asyncio.create_subprocess_exec(
            sys.executable, provider, str(port), f"{tmp}/tls", KEY, stdout=subprocess.DEVNULL
        )
        try:
            async with _common.nats_server() as server:
                with _common.keyring() as keys_dir:
                    nc = await _common.connect(server.url)
                    cedar = _common.BASELINE_CEDAR.read_text() + "\n" + POLICY
                    await _common.register_policy_sets(nc, keys_dir, {"baseline": cedar})
                    env = _common.embedded_policy_env(
                        server.url,
                        keys_dir,
                        SYMBI_SANDBOX__HOST_ID=HOST,
                        SYMBI_SANDBOX__WORK_DIR=f"{tmp}/work",
                    )
                    daemon = build_app(load_settings(env=env))
                    async with daemon.router.lifespan_context(daemon):
                        rt = daemon.state.sandbox.rt
                        url = f"https://127.0.0.1:{port}/v1"
                        settings = msgspec.convert(
                            {"providers": {"bench": {
                                "base_url": url, "api_key": "vault://providers/bench/api_key", "models": ["small"],
                                "prices": {"small": {"input_micro_usd_per_mtok": 150_000,
                                                     "output_micro_usd_per_mtok": 600_000}},
                                "ca_file": str(ca)}}},
                            ModelsSettings,
                        )  # fmt: skip
                        gateway = model_gateway(rt, settings, Secrets())
                        assert gateway is not None
                        caller = Caller(agent_id="agent-1", attempt=1, task_id=await assign(await _common.make_store(
                            nc, keys_dir, producer="scheduler")))  # fmt: skip
                        await run(gateway, caller, url, str(ca), calls, samples)
                        await gateway.aclose()
                    await nc.drain()
        finally:
            upstream.terminate()
            await asyncio.wait_for(upstream.wait(), 10)
    report(samples)


async def run(gateway: Any, caller: Caller, url: str, ca: str, calls: int, samples: dict[str, list[float]]) -> None:
    plain = json.dumps(BODY).encode()
    streamed = json.dumps({**BODY, "stream": True, "stream_options": {"include_usage": True}}).encode()
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient(verify=ca, base_url=url + "/") as direct:
        for _ in range(100):  # the provider starts
            try:
                await direct.post("chat/completions", content=plain, headers=headers)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)

        async def through(body: bytes, first_only: bool) -> float:
            t = time.perf_counter()
            answer = await gateway.handle(caller, InternalRequest("POST", "/v1/chat/completions", {}, body))
            assert answer.status == 200, answer.status
            elapsed = 0.0
            async for _ in answer.body:
                if first_only and not elapsed:
                    elapsed = time.perf_counter() - t
            return elapsed or time.perf_counter() - t

        async def straight(body: bytes, first_only: bool) -> float:
            t = time.perf_counter()
            elapsed = 0.0
            async with direct.stream("POST", "chat/completions", content=body, headers=headers) as answer:
                assert answer.status_code == 200
                async for _ in answer.aiter_bytes():
                    if first_only and not elapsed:
                        elapsed = time.perf_counter() - t
            return elapsed or time.perf_counter() - t

        for _ in range(20):  # warm both paths (connections, caches)
            await through(plain, False)
            await straight(plain, False)
        for _ in range(calls):
            samples["direct"].append(await straight(plain, False) * 1000)
            samples["ours"].append(await through(plain, False) * 1000)
            samples["direct_ttft"].append(await straight(streamed, True) * 1000)
            samples["ours_ttft"].append(await through(streamed, True) * 1000)
        await gateway.drain()
        print(f"budget append conflicts: {gateway.ledger.conflicts}")


def report(samples: dict[str, list[float]]) -> None:
    s = {name: stats(values) for name, values in samples.items()}
    for name, m in s.items():
        print(f"{name:12s} p50 {m['p50']:.3f} ms  p99 {m['p99']:.3f} ms  (n={m['n']})")
    added = s["ours"]["p50"] - s["direct"]["p50"]
    added_ttft = s["ours_ttft"]["p50"] - s["direct_ttft"]["p50"]
    print(f"added p50: completion {added:.3f} ms, time to first token {added_ttft:.3f} ms (target <= 2 ms)")
    ok = added <= 2.0 and added_ttft <= 2.0
    target = f"<={s['direct']['p50'] + 2.0:.3f}"
    print(_common.result_line("model_gateway", s["ours"]["p50"], s["direct"]["p50"], "ms", target, ok))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.calls or (100 if args.quick else 1000)))
