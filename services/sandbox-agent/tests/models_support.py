"""What the model gateway tests share: the test provider (HTTPS under a test CA), a dict-backed secrets store,
tasks assigned with a tenant and a budget, the policies, and a gateway built as the daemon builds it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_common.eventstore import EventStore
from symbi_common.sealing import ChainTip
from symbi_common.secret_source import SecretNotFound
from symbi_common.service import ServiceRuntime
from symbi_common.settings_sandbox import ModelsSettings
from symbi_contracts.lifecycle.config import AgentBudget, Workload
from symbi_contracts.scheduler.events import CODEC as TASKS
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted
from symbi_fixtures.model_upstream import Provider
from symbi_sandbox_agent.egress.internal import Caller, InternalRequest, InternalResponse
from symbi_sandbox_agent.models.gateway import ModelGateway
from symbi_sandbox_agent.models.wiring import model_gateway

from .conftest import IMAGE, limits

#: The provider's key: it must reach the provider and nothing else (tests grep for it).
API_KEY = "sk-test-" + uuid.uuid4().hex
SECRET = "providers/test/api_key"
AGENT = "agent-1"
#: agent-1 may call test/small (not test/other); the baseline denies over budget.
MODEL_POLICY = """
@id("agent-1-small-model")
permit(principal == Agent::"agent-1", action == Action::"model.invoke", resource == Model::"test/small");
"""
#: Micro-dollars per million tokens: a token costs 1 micro-dollar in and 2 out.
PRICES = {"input_micro_usd_per_mtok": 1_000_000, "output_micro_usd_per_mtok": 2_000_000}


class DictSecrets:
    """A secrets store over a dict (the real, encrypted one implements the same protocol)."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.reads = 0

    async def get(self, name: str) -> bytes:
        self.reads += 1
        try:
            return self.values[name]
        except KeyError:
            raise SecretNotFound(f"no secret {name}") from None


def models_settings(
    base_url: str, ca_file: Path, tenants: dict[str, Any] | None = None, **provider: Any
) -> ModelsSettings:
    """The ``test`` provider's settings; ``provider``: more of its settings (e.g. ``completion_limit``)."""
    return msgspec.convert(
        {
            "providers": {
                "test": {
                    "base_url": base_url,
                    "api_key": f"vault://{SECRET}",
                    "models": ["small", "other"],
                    "prices": {"small": PRICES, "other": PRICES},
                    "ca_file": str(ca_file),
                    **provider,
                },
            },
            "tenants": tenants or {},
            "default_max_tokens": 64,
        },
        ModelsSettings,
    )


def gateway(rt: ServiceRuntime, settings: ModelsSettings, store: EventStore | None = None) -> ModelGateway:
    """The gateway as the daemon builds it, with the dict secrets store (``store``: another host's)."""
    built = model_gateway(rt, settings, DictSecrets({SECRET: API_KEY.encode()}))
    assert built is not None
    if store is not None:
        built.ledger.store = store
        built.callers.store = store
    return built


async def assign(
    store: EventStore,
    host_id: str,
    *,
    budget: AgentBudget | None = None,
    tenant: str = "default",
    agent: str = AGENT,
    tier: str = "tier1",
    image: str = IMAGE,
    command: tuple[str, ...] = ("true",),
) -> str:
    """A task of ``agent`` assigned to ``host_id`` with its tenant and budget (as the scheduler writes it)."""
    task_id = f"t{uuid.uuid4().hex[:12]}"
    decision = DecisionRecord(action="task.allocate", effect="allow", policy_version=0)
    events = [
        TaskSubmitted(agent_id=agent, input=b"", priority="normal", submitted_by="test"),
        TaskAssigned(
            host_id=host_id,
            tier=tier,
            risk_score=0.1,
            risk_factors={},
            workload=Workload(image=image, command=command, actions=True),
            limits=limits(),
            attempt=1,
            decision=decision,
            tenant=tenant,
            budget=budget or AgentBudget(),
        ),
    ]
    await store.append("task", task_id, events, TASKS, expected=ChainTip())
    return task_id


def chat(model: str = "test/small", *, stream: bool = False, max_tokens: int = 16, text: str = "hi") -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return msgspec.json.encode(body)


def post(path: str, body: bytes) -> InternalRequest:
    # What a sandbox's OpenAI client sends: its own (dummy) key, which must not reach the provider.
    headers = {"content-type": "application/json", "authorization": "Bearer sk-from-the-sandbox"}
    return InternalRequest(method="POST", path=path, headers=headers, body=body)


async def body_of(response: InternalResponse) -> bytes:
    chunks = [c async for c in response.body]
    return b"".join(chunks)


def caller(task_id: str, agent: str = AGENT) -> Caller:
    return Caller(agent_id=agent, task_id=task_id, attempt=1)


__all__ = ["Provider"]
