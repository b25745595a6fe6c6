"""An agent in a real container (runc and gVisor) calls a model with the SDK over its socket: the host's model
gateway decides it (allow-list and budgets in Cedar), injects the provider's credential, and counts it; the
credential is nowhere the sandbox can see (its output, its environment, the task's events)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import AgentBudget
from symbi_contracts.sandbox_agent.events import ExecutionAction, ExecutionExited
from symbi_fixtures.model_upstream import Provider, make_ca_and_server_cert, serving
from symbi_sandbox_agent.models.pricing import chat_prompt_tokens

from .conftest import Scheduler, running_agent
from .models_support import API_KEY, MODEL_POLICY, assign, gateway, models_settings
from .test_actions import BASELINE, register_policies
from .test_channel import agent_image

__all__ = ["agent_image"]  # a fixture, used by name

MODEL_AGENT = """
import json, os
from symbi_agent import Agent, BudgetExceeded, SymbiAgentError

out = {}
with Agent() as a:
    out["channel"] = a.channel
    out["ops"] = a.hello()["ops"]["models.complete"]
    first = a.models.complete("test/small", "hi", max_tokens=16)
    out["text"] = first["text"]
    out["usage"] = first["usage"]
    try:
        a.models.complete("test/other", "hi", max_tokens=16)
        out["other"] = "ok"
    except SymbiAgentError as err:
        out["other"] = err.code
    out["more"] = 0
    while out["more"] < 20:
        try:
            a.models.complete("small", "hi", max_tokens=16)
            out["more"] += 1
        except BudgetExceeded as err:
            out["exceeded"] = [err.code, err.scope, err.unit, err.left, err.requested]
            break
    out["env"] = dict(os.environ)
print(json.dumps(out))
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_an_agent_calls_a_model_through_the_gateway(
    tier: str,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    per_call = chat_prompt_tokens({"messages": [{"role": "user", "content": "hi"}]}) + 16
    provider = Provider(api_key=API_KEY, usage=(per_call - 16, 16))
    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "models": MODEL_POLICY})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    with serving(provider, cert, key) as url:
        async with running_agent(settings) as agent:
            # What the daemon builds from [models] with the secrets store (here: a dict-backed one).
            agent.daemon.service.models = gateway(agent.daemon.rt, models_settings(url, ca))
            task_id = await assign(
                scheduler.store,
                agent.host_id,
                budget=AgentBudget(tokens_per_day=3 * per_call),
                tier=tier,
                image=agent_image,
                command=("python3", "-c", MODEL_AGENT),
            )
            await scheduler.publish(agent.host_id, task_id, 1)
            r = await scheduler.result(task_id, timeout=120)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert r.stdout, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["channel"] == "socket"
    assert out["ops"] is True
    assert out["text"] == "hello from the model"
    assert out["usage"]["total_tokens"] == per_call
    assert out["other"] == "denied"
    assert out["more"] == 2  # three calls fit the agent's budget
    assert out["exceeded"] == ["budget_exceeded", "agent", "tokens", 0, per_call]
    assert provider.authorizations == [f"Bearer {API_KEY}"] * 3
    # Every call is on the task's audit trail with its decision; the key is nowhere the sandbox or the trail has it.
    calls = [e for e in r.of(ExecutionAction) if e.action == "model.invoke"]
    assert [e.outcome for e in calls] == ["allowed", "refused", "allowed", "allowed", "refused"]
    assert all(e.decision is not None for e in calls)
    seen = r.stdout + r.stderr + b"".join(repr(e).encode() for e in r.events)
    assert API_KEY.encode() not in seen
