"""A policy-denied action in the middle of a task, end to end, on one real ``symbi up`` runtime.

``note-keeper.symbi`` asks the runtime (the action gateway) to write its input to the agent's memory; its
own policy ``confidential_notes`` denies that. The write must not happen, the task must be paused in
place and the agent Suspended, and the denial must be in the audit trail, linked to the task, with the
audit verifier finding nothing wrong. After the policy change (the suspended agent reconfigured
without the rule) and a resume, the same task runs on: the write happens and the task completes with the memory's id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from symbi_cli.agent_cmd import registration_body
from symbi_cli.credentials import auth_headers
from symbi_cli.events import operator_url
from symbi_cli.run_receipt import stored_task_events
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.datakeys import open_service_datakeys
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.sealing import decrypt, open_envelope
from symbi_common.streams import RawMessage
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, ExecutionAction, ExecutionEvent
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC
from symbi_contracts.scheduler.events import TaskEvent, TaskSuspended

REPO = Path(__file__).resolve().parents[2]
NOTE_KEEPER = REPO / "examples" / "agents" / "note-keeper.symbi"
NOTE = "Board meeting moved to Thursday"

pytestmark = pytest.mark.timeout(180)


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s; last value: {last!r}")


async def opened_events(home: Path, task_id: str) -> list[tuple[RawMessage, TaskEvent | ExecutionEvent]]:
    """The task's and its execution's stored events, verified and decrypted here, in stream order."""
    keys = home / "keys"
    registry = KeyRegistry.load(keys)
    nc = await nats.connect(**server_options(operator_url(home)), connect_timeout=5, allow_reconnect=False)
    try:
        datakeys = await open_service_datakeys(nc.jetstream(), keys / "audit", "audit", registry)
        out: list[tuple[RawMessage, TaskEvent | ExecutionEvent]] = []
        for raw in await stored_task_events(operator_url(home), task_id):
            opened = open_envelope(raw.data, subject=raw.subject, sequence=raw.sequence, registry=registry)
            plaintext = decrypt(opened, await datakeys.by_id(opened.header.data_key_id))
            codec: Any = TASK_CODEC if raw.subject.startswith("evt.task.") else EXECUTION_CODEC
            out.append((raw, codec.decode(plaintext, event_type=opened.header.event_type)))
        return out
    finally:
        await nc.drain()


async def test_a_denied_action_suspends_the_agent_and_a_policy_change_and_resume_complete_the_task(
    runtime_options: RuntimeOptions, runtime_home: Path
) -> None:
    options = runtime_options
    agent_id = f"note-keeper-{secrets.token_hex(3)}"
    async with LocalRuntime(options) as rt, httpx.AsyncClient(timeout=15) as http:
        await rt.wait_ready(timeout=90)
        http.headers.update(auth_headers(rt.home))
        lifecycle, scheduler, context = rt.url_of("lifecycle"), rt.url_of("scheduler"), rt.url_of("context")
        audit, policy = rt.url_of("audit"), rt.url_of("policy")

        async def agent_state() -> str:
            r = await http.get(f"{lifecycle}/v1/agents/{agent_id}")
            assert r.status_code == 200, r.text
            return str(r.json()["state"])

        async def task() -> dict[str, Any]:
            r = await http.get(f"{scheduler}/v1/tasks/{task_id}")
            assert r.status_code == 200, r.text
            view: dict[str, Any] = r.json()
            return view

        async def memories() -> list[dict[str, Any]]:
            r = await http.post(f"{context}/v1/memories/query", json={"agent_id": agent_id, "query": NOTE})
            assert r.status_code == 200, r.text
            hits: list[dict[str, Any]] = r.json()["results"]
            return hits

        # Registered from its definition, as ``symbi run`` does.
        r = await http.post(f"{lifecycle}/v1/agents", json=registration_body(NOTE_KEEPER, agent_id))
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "Ready", r.json()
        r = await http.post(f"{scheduler}/v1/tasks", json={"agent_id": agent_id, "input": NOTE})
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]

        async def story() -> str:
            """What happened so far, for a failure message."""
            told = [f"{type(e).__name__} {msgspec_json(e)}" for _, e in await opened_events(runtime_home, task_id)]
            return f"task {await task()}; agent {await agent_state()}; events:\n" + "\n".join(told)

        # The write is denied: the task is paused in place, the agent Suspended, nothing was written.
        try:
            await eventually(lambda: _equals(agent_state, "Suspended"), "the agent is suspended", timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await story()}") from None
        paused = await eventually(lambda: _when(task, lambda v: v["status"] == "paused"), "the task is paused")
        assert paused["attempt"] == 1
        assert paused["outcome"] == ""
        r = await http.get(f"{lifecycle}/v1/agents/{agent_id}")
        assert "memory.write" in json.dumps(r.json()), r.json()
        assert await memories() == []

        # The denial is in the audit trail, linked to the task, and the verifier finds nothing wrong.
        events = await opened_events(runtime_home, task_id)
        denied = [(m, e) for m, e in events if isinstance(e, ExecutionAction) and e.outcome == "denied"]
        assert len(denied) == 1, [type(e).__name__ for _, e in events]
        message, action = denied[0]
        assert action.action == "memory.write"
        assert action.resource == "notes"
        assert action.decision is not None
        assert action.decision.effect == "deny"
        assert action.context.get("classification") == "confidential"
        suspended = [e for _, e in events if isinstance(e, TaskSuspended)]
        assert [(s.reason, s.attempt, s.decision) for s in suspended] == [("action_denied", 1, action.decision)]
        r = await http.get(
            f"{audit}/v1/audit/events",
            params={
                "aggregate": f"execution.{task_id}",
                "event_type": "execution.action",
                "min_sequence": message.sequence,
            },
        )
        assert r.status_code == 200, r.text
        rows = r.json()["items"]
        assert [row["sequence"] for row in rows] == [message.sequence], rows
        assert rows[0]["verified"] is True
        assert rows[0]["aggregate_id"] == task_id
        r = await http.get(f"{audit}/v1/audit/status")
        assert r.status_code == 200, r.text
        assert r.json()["findings"] == 0, (await http.get(f"{audit}/v1/audit/findings")).text

        # The operator changes the policy — reconfigures the suspended agent from its definition without the
        # rule — and resumes the agent right away: the configure call answers once the policy service has
        # applied the change, so the resumed task's pending write is decided under the new policy and runs on.
        definition = re.sub(r"\n  policy confidential_notes \{.*?\n  \}\n", "\n", NOTE_KEEPER.read_text(), flags=re.S)
        assert "confidential_notes {" not in definition
        assert "deny: memory.write" not in definition
        r = await http.post(
            f"{lifecycle}/v1/agents/{agent_id}/configure", json={"definition": definition, "file": "note-keeper.symbi"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "Suspended"
        r = await http.get(f"{policy}/v1/policy-sets/agent-{agent_id}")
        # Its only rule is gone: the agent's own set holds one that never applies (active, for a later change).
        assert (r.json()["status"], r.json()["policies"]) == ("active", ["agent-no-policies"]), r.text
        r = await http.post(f"{lifecycle}/v1/agents/{agent_id}/resume", json={"reason": "policy changed"})
        assert r.status_code == 200, r.text
        done = await eventually(lambda: _when(task, lambda v: v["status"] == "completed"), "the task completes")
        assert done["outcome"] == "succeeded", done
        r = await http.get(f"{scheduler}/v1/tasks/{task_id}/output")
        assert r.status_code == 200, r.text
        result = json.loads(base64.b64decode(r.json()["data_base64"]))
        assert result["stored"] is True, result
        assert result["note"] == NOTE, result
        memory_id = result["memory_id"]
        hits = await eventually(memories, "the note is in the agent's memory")
        assert any(memory_id in json.dumps(hit) for hit in hits), hits
        assert any(NOTE in json.dumps(hit) for hit in hits), hits
        await eventually(lambda: _equals(agent_state, "Ready"), "the agent is Ready again")

        # The trail tells the whole story: denied, paused, suspended, allowed on a second look, resumed, done.
        events = await opened_events(runtime_home, task_id)
        kinds = [m.headers.get("Symbi-Event-Type") for m, _ in events]
        decided = [e.outcome for _, e in events if isinstance(e, ExecutionAction)]
        assert decided == ["denied", "allowed"], kinds
        for expected in ("task.suspended", "execution.resumed", "task.resumed", "task.completed"):
            assert kinds.count(expected) == 1, kinds
        assert kinds.index("task.suspended") < kinds.index("task.resumed") < kinds.index("task.completed")
        r = await http.get(f"{audit}/v1/audit/status")
        assert r.json()["findings"] == 0


def msgspec_json(event: Any) -> str:
    return msgspec.json.encode(event).decode()[:600]


async def _equals(read: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return bool(await read() == expected)


async def _when(read: Callable[[], Awaitable[dict[str, Any]]], test: Callable[[dict[str, Any]], bool]) -> Any:
    value = await read()
    return value if test(value) else None
