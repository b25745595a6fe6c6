"""Policy decision latency: embedded decision point and over NATS, against raw ``cedarpy.is_authorized``.

A throwaway nats-server and keyring; the policy service runs as its own process (``python -m
symbi_policy``) with the example policy sets of ``examples/policies/`` registered (baseline, access
control, data flow, resource usage, audit: about twenty policies). Then, in this process:

* baseline: ``cedarpy.is_authorized`` on the same combined, pre-parsed policy set, with the request and
  entities already in Cedar's form (the cost of Cedar alone);
* embedded: ``EmbeddedDecisionPoint.decide`` of a scheduler runtime following the policy events
  (request conversion, Cedar, decision with deciding policies and conditions);
* over NATS: ``RemoteDecisionPoint.decide`` (``cmd.policy.decide``), one request at a time;
* batch: ``RemoteDecisionPoint.decide_batch`` (``cmd.policy.decide_batch``), 500 requests per call.

Requests cycle through a mix of allows, conditional allows and denials over 1,000 different agents.
Targets: embedded p99 < 1 ms, over NATS p99 < 5 ms, batch >= 10,000 decisions/s.

    uv run python bench/policy_decide.py [--quick] [--decisions N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import cedarpy
from symbi_common.commands import CommandClient
from symbi_common.decisions import DecisionRequest, EntityRef
from symbi_common.errors import SymbiError
from symbi_common.policy import EmbeddedDecisionPoint, RemoteDecisionPoint
from symbi_common.policy.engine import cedar_request
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"
SETS = ("access_control", "data_flow", "resource_usage", "audit")
BATCH = 500


def requests(n: int) -> list[DecisionRequest]:
    phi = EntityRef(type="Data", id="rec-1", attrs={"classification": "phi"})
    host = EntityRef(type="Host", id="h1", attrs={"region": "eu"})
    out: list[DecisionRequest] = []
    for i in range(n):
        agent = f"agent-{i % 1000}"
        kind = i % 6
        if kind == 0:
            out.append(
                DecisionRequest(
                    principal=EntityRef(type="Agent", id=agent, attrs={"clearances": ["phi"] if i % 12 else []}),
                    action="data.read",
                    resource=phi,
                    context={"purpose": "treatment"},
                )
            )
        elif kind == 1:
            out.append(
                DecisionRequest(
                    principal=EntityRef(type="Agent", id=agent, attrs={"security_tier": "tier1"}),
                    action="task.allocate",
                    resource=host,
                    context={"resources": {"memory_mb": 512 + i % 4096, "cpu_cores": 1.5}},
                )
            )
        elif kind == 2:
            out.append(
                DecisionRequest(
                    principal=EntityRef(type="Agent", id=agent),
                    action="tool.invoke",
                    resource=EntityRef(type="Tool", id="shell" if i % 4 else "search"),
                    context={"classification": "internal"},
                )
            )
        elif kind == 3:
            out.append(
                DecisionRequest(
                    principal=EntityRef(type="Agent", id=agent),
                    action="memory.read",
                    resource=EntityRef(type="Memory", id=f"m-{i}", parents=(f'Agent::"{agent}"',)),
                )
            )
        elif kind == 4:
            out.append(
                DecisionRequest(
                    principal=EntityRef(type="Agent", id=agent),
                    action="message.send",
                    resource=EntityRef(type="Agent", id=f"agent-{(i + 1) % 1000}"),
                    context={"classification": "phi"},
                )
            )
        else:
            out.append(
                DecisionRequest(
                    principal=EntityRef(type="User", id="bob", attrs={"roles": ["viewer"]}),
                    action="agent.configure",
                    resource=EntityRef(type="Agent", id=agent),
                )
            )
    return out


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000


def env_for(url: str, keys_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "SYMBI_NATS_URL": url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__DECISION_LOG": "false",
        **extra,
    }


async def start_policy_service(url: str, keys_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_for(url, keys_dir, SYMBI_HTTP_PORT=str(_common.free_port()))}
    proc = subprocess.Popen([sys.executable, "-m", "symbi_policy"], env=env)  # noqa: ASYNC220 - started once
    nc = await _common.connect(url)
    client = CommandClient(nc, timeout=2)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.call("policy", "list", {}, dict)
                return proc
            except SymbiError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the policy service did not start") from None
                await asyncio.sleep(0.1)
    finally:
        await nc.drain()


async def run(n: int) -> None:
    print(_common.machine_summary())
    async with _common.nats_server() as server:
        with _common.keyring() as keys_dir:
            proc = await start_policy_service(server.url, keys_dir)
            runtimes: list[ServiceRuntime] = []
            try:
                embedded_rt = ServiceRuntime(
                    "scheduler", load_settings(env=env_for(server.url, keys_dir)), use_database=False
                )
                remote_rt = ServiceRuntime(
                    "context",
                    load_settings(env=env_for(server.url, keys_dir, SYMBI_POLICY__ENFORCEMENT="remote")),
                    use_database=False,
                )
                for rt in (embedded_rt, remote_rt):
                    await rt.start()
                    runtimes.append(rt)
                for name in SETS:
                    await remote_rt.client.call(
                        "policy",
                        "register",
                        {"set_id": name.replace("_", "-"), "cedar": (EXAMPLES / f"{name}.cedar").read_text()},
                        dict,
                    )
                embedded = await embedded_rt.decision_point()
                remote = await remote_rt.decision_point()
                assert isinstance(embedded, EmbeddedDecisionPoint)
                assert isinstance(remote, RemoteDecisionPoint)
                want = (await remote.decide(requests(1)[0])).policy_version
                if not await embedded.follower.wait_for(want, 5):
                    raise SystemExit("the embedded decision point did not reach the policy version")
                await report(n, embedded, remote)
            finally:
                for rt in runtimes:
                    await rt.stop()
                proc.terminate()
                proc.wait(timeout=10)


async def report(n: int, embedded: EmbeddedDecisionPoint, remote: RemoteDecisionPoint) -> None:
    reqs = requests(n)
    engine = embedded.follower.engine
    print(f"policy version {engine.version}: {len(engine)} policies in {len(engine.set_ids)} sets; {n} decisions each")
    policies = engine.cedar_policies
    raw = [cedar_request(r) for r in reqs]
    cedar_calls = [(c, json.dumps(e)) for c, e in raw]

    # Same answers first: the embedded and the remote point agree on every request of the mix.
    sample = reqs[:60]
    if [await embedded.decide(r) for r in sample] != [await remote.decide(r) for r in sample]:
        raise SystemExit("embedded and remote decisions differ")

    gc.collect()
    base: list[float] = []
    for request, entities in cedar_calls:
        t = time.perf_counter()
        cedarpy.is_authorized(request, policies, entities)
        base.append(time.perf_counter() - t)
    gc.collect()
    ours: list[float] = []
    for r in reqs:
        t = time.perf_counter()
        await embedded.decide(r)
        ours.append(time.perf_counter() - t)
    gc.collect()
    nats_lat: list[float] = []
    for r in reqs[: max(200, n // 4)]:
        t = time.perf_counter()
        await remote.decide(r)
        nats_lat.append(time.perf_counter() - t)
    gc.collect()
    t = time.perf_counter()
    decided = 0
    for i in range(0, n, BATCH):
        decided += len(await remote.decide_batch(reqs[i : i + BATCH]))
    batch_rate = decided / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        await embedded.decide_batch(reqs[i : i + BATCH])
    embedded_batch_rate = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        chunk = cedar_calls[i : i + BATCH]
        for request, entities in chunk:
            cedarpy.is_authorized(request, policies, entities)
    raw_rate = n / (time.perf_counter() - t)

    b50, b99 = percentiles(base)
    e50, e99 = percentiles(ours)
    n50, n99 = percentiles(nats_lat)
    print(f"raw cedarpy.is_authorized   p50={b50:.3f} ms  p99={b99:.3f} ms")
    print(f"embedded decide             p50={e50:.3f} ms  p99={e99:.3f} ms")
    print(f"over NATS (cmd.policy.decide) p50={n50:.3f} ms  p99={n99:.3f} ms")
    print(f"batch over NATS ({BATCH}/call)  {batch_rate:,.0f} decisions/s")
    print(f"batch embedded ({BATCH}/call)   {embedded_batch_rate:,.0f} decisions/s")
    print(f"raw cedarpy one by one       {raw_rate:,.0f} decisions/s")
    print(_common.result_line("policy_decide_nats_p99", n99, b99, "ms", "<5", n99 < 5.0))
    print(
        _common.result_line("policy_decide_batch", batch_rate, raw_rate, "decisions/s", ">=10000", batch_rate >= 10_000)
    )
    print(_common.result_line("policy_decide", e99, b99, "ms", "<1", e99 < 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (2,000 decisions)")
    parser.add_argument("--decisions", type=int, default=20_000)
    args = parser.parse_args()
    n = 2_000 if args.quick else args.decisions
    asyncio.run(run(n))


if __name__ == "__main__":
    main()
