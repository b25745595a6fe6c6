"""Fixtures of the SDK tests: a real sandbox-agent daemon (real NATS, real Docker engine, embedded Cedar
policies following real policy events) with data roots, and the test harness over it
(``symbi_sandbox_agent.harness``). The SDK itself stays standard-library only; its tests use the runtime."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from symbi_sandbox_agent.harness import GatewayHarness
from symbi_sandbox_agent.main import build_app

ROOT = Path(__file__).resolve().parents[3]
BASELINE = ROOT / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two data roots: ``notes`` (a file in it) and ``drafts`` (empty)."""
    base = tmp_path / "data"
    (base / "notes").mkdir(parents=True)
    (base / "notes" / "todo.txt").write_text("ship the SDK\n")
    (base / "drafts").mkdir()
    return base


async def register_policies(make_store: Any, sets: dict[str, str]) -> None:
    """Policy sets as the policy service records them (checked first, like it does)."""
    policy = await make_store("policy")
    for set_id, cedar in sets.items():
        compile_policies(set_id, cedar)
        event = PolicySetRegistered(set_id=set_id, cedar=cedar)
        await policy.append(AGGREGATE_TYPE, set_id, [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)


@pytest.fixture
def policies() -> dict[str, str]:
    """The policy sets in force (a test may add its own before ``harness`` starts)."""
    return {"baseline": BASELINE.read_text()}


@pytest.fixture
async def harness(
    nats_url: str,
    keys_dir: Path,
    tmp_path: Path,
    data: Path,
    make_store: Any,
    provisioned: NatsClient,
    policies: dict[str, str],
) -> AsyncIterator[GatewayHarness]:
    """The test harness over a running sandbox-agent whose host declares the ``data`` roots."""
    await register_policies(make_store, policies)
    settings = load_settings(
        env={
            "SYMBI_NATS_URL": nats_url,
            "SYMBI_KEYS_DIR": str(keys_dir),
            "SYMBI_LOG_LEVEL": "warning",
            "SYMBI_POLICY__ENFORCEMENT": "embedded",
            "SYMBI_POLICY__DECISION_LOG": "false",
            "SYMBI_SANDBOX__HOST_ID": f"sdk{os.getpid()}",
            "SYMBI_SANDBOX__WORK_DIR": str(tmp_path / "work"),
            "SYMBI_SANDBOX__DATA_ROOTS__NOTES": str(data / "notes"),
            "SYMBI_SANDBOX__DATA_ROOTS__DRAFTS": str(data / "drafts"),
        }
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        yield GatewayHarness(app.state.sandbox.service, tasks=await make_store("scheduler"))
