"""One OpenTelemetry trace across the whole runtime for one ``symbi run``, collected by a real OTLP receiver.

A whole runtime (``symbi up``'s six services, nats-server, PostgreSQL, Docker) and the ``symbi run``
process all export their spans over OTLP/HTTP to the receiver of this test. The trace whose id
``symbi run --json`` prints must be one tree: a single root (the CLI's ``symbi run`` span), every
other span's parent among the received spans, and spans from every process that worked on the run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "agents" / "hello.symbi"
pytestmark = pytest.mark.timeout(150)


async def test_one_symbi_run_is_one_trace_across_every_service(
    traced_runtime: RuntimeOptions, runtime_home: Path, symbi_exe: str, otlp_receiver: Any
) -> None:
    options = traced_runtime
    env = dict(options.env or {})
    async with LocalRuntime(options) as rt:
        await rt.wait_ready(timeout=60)
        proc = await asyncio.create_subprocess_exec(
            symbi_exe,
            "run",
            str(HELLO),
            "--input",
            "world",
            "--home",
            str(runtime_home),
            "--json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode == 0, err.decode()
        doc = json.loads(out)
        trace_id = doc["trace_id"]
        assert len(trace_id) == 32, trace_id
        assert int(trace_id, 16) != 0
        assert f"trace {trace_id}" in err.decode()  # the human output names it too

        await otlp_receiver.assert_one_trace(trace_id, timeout=30)
        spans = otlp_receiver.spans()
        assert not otlp_receiver.refused, otlp_receiver.refused

        mine = [s for s in spans if s.trace_id == trace_id]
        by_id = {s.span_id: s for s in mine}
        (root,) = [s for s in mine if not s.parent_span_id]
        assert (root.service, root.name) == ("symbi-cli", "symbi run")
        assert root.attributes["symbi.exit_code"] == 0
        agent_id, task_id = doc["agent"]["id"], doc["task"]["task_id"]

        # The registration: the lifecycle's HTTP span is a child of the CLI's span, initialization within it,
        # with the policy decision it asked for.
        (init,) = [s for s in mine if s.name == "lifecycle.initialize"]
        assert init.attributes["symbi.agent_id"] == agent_id
        assert init.attributes["symbi.outcome"] == "ready"
        request = by_id[init.parent_span_id]
        assert (request.service, request.name) == ("symbi-lifecycle", "POST /v1/agents")
        assert request.parent_span_id == root.span_id
        decide = [s for s in mine if s.name == "policy.decide" and s.parent_span_id == init.span_id]
        assert [d.attributes["symbi.policy.action"] for d in decide] == ["agent.register"]
        assert decide[0].attributes["symbi.policy.decision"] in ("allow", "conditions")

        # The policy service followed the agent's events (to activate its own policies) in the same trace.
        followed = [s for s in mine if s.service == "symbi-policy" and s.name == "policy.agent_event"]
        assert {s.attributes["symbi.subject"] for s in followed} == {f"evt.agent.{agent_id}"}
        assert all(by_id[s.parent_span_id].service == "symbi-lifecycle" for s in followed)

        # The task's events were verified by the audit service, each as a child of the span that stored it.
        audited = [s for s in mine if s.name == "audit.verify"]
        subjects = {s.attributes["symbi.subject"] for s in audited}
        assert f"evt.task.{task_id}" in subjects, subjects
        assert f"evt.agent.{agent_id}" in subjects, subjects
        assert all(s.attributes["symbi.audit.verified"] is True for s in audited)

        # The result stored as a memory was indexed by the context service in the same trace.
        assert any(s.service == "symbi-context" and s.name == "context.index" for s in mine)
        assert any(s.service == "symbi-context" and s.name == "context.store" for s in mine)

        # `symbi agent register` and `symbi task run` are traces of their own, rooted in the CLI.
        registered = await cli(symbi_exe, env, "agent", "register", str(HELLO), "--id", "traced", "--url",
                               rt.url_of("lifecycle"))  # fmt: skip
        assert "traced" in registered
        await cli(symbi_exe, env, "task", "run", "traced", "again", "--url", rt.url_of("scheduler"),
                  "--home", str(runtime_home))  # fmt: skip
        for command, service, request in (
            ("symbi agent register", "symbi-lifecycle", "POST /v1/agents"),
            ("symbi task run", "symbi-scheduler", "POST /v1/tasks"),
        ):
            spans = await otlp_receiver.wait_for(lambda got, c=command, r=request: rooted_in(got, c, r), timeout=20)
            (root,) = [s for s in spans if s.name == command and s.service == "symbi-cli" and not s.parent_span_id]
            assert root.attributes.get("symbi.exit_code", 0) == 0
            children = [s for s in spans if s.parent_span_id == root.span_id]
            assert any(s.service == service and s.name == request for s in children), children


def rooted_in(spans: list[Any], command: str, request: str) -> bool:
    """Whether the CLI's ``command`` span arrived with a ``request`` server span as its child."""
    roots = {s.span_id for s in spans if s.name == command and not s.parent_span_id}
    return any(s.name == request and s.parent_span_id in roots for s in spans)


async def cli(symbi_exe: str, env: dict[str, str], *args: str) -> str:
    """``symbi <args>`` as a real process that must succeed; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        symbi_exe, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, f"symbi {' '.join(args)}: {err.decode()}"
    return out.decode()
