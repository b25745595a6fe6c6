"""One ``symbi run`` is one trace in a real Jaeger (v1.75.0, built by ``deploy/host/tools.sh``), read back
through Jaeger's query API.

The whole runtime (six services) and the ``symbi run`` process export OTLP/HTTP to Jaeger. Asked for the
trace id that ``symbi run --json`` prints, Jaeger returns exactly one trace: spans from the CLI and every
service, a single root (the CLI's ``symbi run``), every parent reference pointing at a span of the same
trace, and no warning from Jaeger but its clock-skew note on consumers' spans (which start after the span
that stored their event ended). Its service list
names every process. ``test_trace.py`` checks the same trace in more detail against a receiver of our own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions

from .conftest import TRACED, Jaeger

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "agents" / "hello.symbi"
# A first-time build of Jaeger (about 9 minutes on two cores) happens inside the session fixture; once cached
# the test takes about 40 s.
pytestmark = pytest.mark.timeout(1500)
#: Jaeger's note on a child span that starts after its parent ended. Every event consumer's span does: it
#: handles the event after the span that stored it finished (asynchronous messaging), which Jaeger's skew
#: adjuster takes for a clock difference between hosts. Any other warning (a missing parent) is a problem.
CLOCK_SKEW = "clock skew adjustment disabled"


def trace_problems(doc: dict[str, Any], trace_id: str) -> list[str]:
    """Why Jaeger's answer for ``trace_id`` is not one whole trace of a run; empty when it is."""
    traces = doc.get("data") or []
    if len(traces) != 1:
        return [f"{len(traces)} traces for id {trace_id}"]
    trace = traces[0]
    spans = trace["spans"]
    if trace["traceID"] != trace_id:
        return [f"Jaeger answered with trace {trace['traceID']}"]
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    ids = {s["spanID"] for s in spans}
    problems = []
    missing = sorted(set(TRACED) - set(services.values()))
    if missing:
        problems.append(f"no span from {missing}")
    roots = [f"{services[s['processID']]}:{s['operationName']}" for s in spans if not s["references"]]
    if roots != ["symbi-cli:symbi run"]:
        problems.append(f"roots {roots}, not the CLI's one 'symbi run'")
    for span in spans:
        for ref in span["references"]:
            if ref["refType"] != "CHILD_OF" or ref["traceID"] != trace_id or ref["spanID"] not in ids:
                problems.append(f"{span['operationName']}: reference {ref} outside the trace")
        warnings = [w for w in span.get("warnings") or [] if not w.startswith(CLOCK_SKEW)]
        if warnings:
            problems.append(f"{span['operationName']}: Jaeger warns {warnings}")
    return problems


async def test_one_symbi_run_is_one_trace_in_jaeger(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, jaeger: Jaeger
) -> None:
    env = dict(
        runtime_options.env or {}, OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_endpoint, OTEL_BSP_SCHEDULE_DELAY="200"
    )
    options = dataclasses.replace(runtime_options, env=env)
    async with LocalRuntime(options) as rt:
        await rt.wait_ready(timeout=60)
        proc = await asyncio.create_subprocess_exec(
            symbi_exe, "run", str(HELLO), "--input", "jaeger", "--home", str(runtime_home), "--json",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode == 0, err.decode()
        trace_id = json.loads(out)["trace_id"]
        assert len(trace_id) == 32, trace_id

        async with httpx.AsyncClient(base_url=jaeger.query_url, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:  # spans arrive in batches from seven processes
                answer = await http.get(f"/api/traces/{trace_id}")
                doc = answer.json() if answer.status_code == 200 else {}
                problems = trace_problems(doc, trace_id)
                if not problems or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert not problems, f"trace {trace_id} in Jaeger: {'; '.join(problems)}"

            spans = doc["data"][0]["spans"]
            services = {pid: p["serviceName"] for pid, p in doc["data"][0]["processes"].items()}
            by_id = {s["spanID"]: s for s in spans}
            (init,) = [s for s in spans if s["operationName"] == "lifecycle.initialize"]
            request = by_id[init["references"][0]["spanID"]]
            assert (services[request["processID"]], request["operationName"]) == ("symbi-lifecycle", "POST /v1/agents")
            assert any(
                services[s["processID"]] == "symbi-audit" and s["operationName"] == "audit.verify" for s in spans
            )
            listed = (await http.get("/api/services")).json()["data"]
            assert set(TRACED) <= set(listed), listed


def test_jaeger_stops_at_once_after_answering_a_query(jaeger: Jaeger) -> None:
    """The test's Jaeger does not trace its own query API: had it, its exit after a query would wait 10 s for
    that export (to nowhere) to time out, in the teardown of every test that reads a trace back."""
    answer = httpx.get(f"{jaeger.query_url}/api/services", timeout=10)
    assert answer.status_code == 200, answer.text
    started = time.monotonic()
    jaeger.process.terminate()
    jaeger.process.wait(timeout=30)
    took = time.monotonic() - started
    assert took < 3.0, f"jaeger took {took:.1f} s to stop after a query"


def test_the_trace_check_finds_what_it_looks_for() -> None:
    """``trace_problems`` on doctored answers: a whole trace passes, each defect is named."""
    tid = "ab" * 16

    def span(sid: str, pid: str, name: str, parent: str | None = None, warnings: list[str] | None = None) -> Any:
        refs = [] if parent is None else [{"refType": "CHILD_OF", "traceID": tid, "spanID": parent}]
        return {"spanID": sid, "processID": pid, "operationName": name, "references": refs, "warnings": warnings}

    processes = {f"p{i}": {"serviceName": name} for i, name in enumerate(TRACED)}
    spans = [span("s0", "p0", "symbi run")] + [
        span(f"s{i}", f"p{i}", "work", "s0", [f"{CLOCK_SKEW}; not applying calculated delta of -3ms"])
        for i in range(1, len(TRACED))
    ]
    whole = {"data": [{"traceID": tid, "spans": spans, "processes": processes}]}
    assert trace_problems(whole, tid) == []
    assert trace_problems({"data": []}, tid) == [f"0 traces for id {tid}"]
    orphan = json.loads(json.dumps(whole))
    orphan["data"][0]["spans"][1]["references"][0]["spanID"] = "gone"
    assert any("outside the trace" in p for p in trace_problems(orphan, tid))
    two_roots = json.loads(json.dumps(whole))
    two_roots["data"][0]["spans"][2]["references"] = []
    assert any("roots" in p for p in trace_problems(two_roots, tid))
    no_audit = json.loads(json.dumps(whole))
    no_audit["data"][0]["processes"] = {k: v for k, v in processes.items() if v["serviceName"] != "symbi-audit"}
    no_audit["data"][0]["spans"] = [s for s in spans if s["processID"] in no_audit["data"][0]["processes"]]
    assert any("no span from ['symbi-audit']" in p for p in trace_problems(no_audit, tid))
    warned = json.loads(json.dumps(whole))
    warned["data"][0]["spans"][1]["warnings"] = ["invalid parent span IDs=s9; skipping clock skew adjustment"]
    assert any("Jaeger warns" in p for p in trace_problems(warned, tid))
