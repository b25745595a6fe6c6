"""Memory access behind the real embedded decision point (``[policy] enforcement = "embedded"``).

The policy sets are real ``policy.set_registered`` events signed with the policy service's key: the
shipped baseline (an agent reads and writes its own memories) and a grant on named knowledge bases.
The context service's embedded decision point follows them like every service does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.errors import PolicyDenied
from symbi_common.eventstore import EventStore
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings

from .conftest import service_env
from .test_service import ingest_corpus

BASELINE = Path(__file__).resolve().parents[3] / "examples" / "policies" / "baseline.cedar"
GRANTS = """
@id("librarian-curates-knowledge")
permit(principal == Agent::"librarian", action == Action::"memory.write", resource is Memory)
when { [Memory::"health", Memory::"networks"].contains(resource) };

@id("bob-reads-health")
permit(principal == Agent::"bob", action == Action::"memory.read", resource == Memory::"health");
"""


async def test_agents_read_their_own_memories_and_granted_knowledge_only(
    make_store: Callable[..., Awaitable[EventStore]],
    provisioned: NatsClient,
    nats_url: str,
    keys_dir: Path,
    tmp_path: Path,
    start: Any,
    corpus: dict[str, str],
) -> None:
    policy = await make_store("policy")
    for set_id, cedar in (("baseline", BASELINE.read_text()), ("knowledge-grants", GRANTS)):
        compile_policies(set_id, cedar)  # the policy service would refuse an invalid set; so does this test
        event = PolicySetRegistered(set_id=set_id, cedar=cedar)
        await policy.append(AGGREGATE_TYPE, set_id, [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)
    env = service_env(
        nats_url,
        keys_dir,
        tmp_path / "vectors",
        SYMBI_POLICY__ENFORCEMENT="embedded",
        SYMBI_POLICY__DECISION_LOG="false",
    )
    async for running in start(load_settings(env=env)):
        await ingest_corpus(running, {"sleep": corpus["sleep"]}, kb="health")
        await ingest_corpus(running, {"tcp": corpus["tcp"]}, kb="networks")
        out = await running.post(
            "/v1/memories", {"agent_id": "ada", "memories": [{"text": "Ada sleeps eight hours a night."}]}, 201
        )
        await running.index.wait_for(out["sequence"])

        # Ada reads her own memory (baseline-agents-own-memory).
        own = await running.post("/v1/memories/query", {"agent_id": "ada", "query": "how long does Ada sleep"})
        assert [r["id"] for r in own["results"]][:1] == out["ids"]

        # Bob may read "health" only: Ada's memories and "networks" are left out (each denial is logged; the
        # log lines are checked in test_service.py).
        res = await running.post(
            "/v1/memories/query",
            {
                "agent_id": "bob",
                "query": "how many hours of sleep",
                "owners": ["ada"],
                "knowledge_bases": ["health", "networks"],
            },
        )
        assert res["results"], res
        assert {r["owner"] for r in res["results"]} == {"health"}
        denied_search = await running.post(
            "/v1/knowledge/search", {"agent_id": "bob", "query": "handshake", "knowledge_bases": ["networks"]}
        )
        assert denied_search["results"] == []

        # Writing into another agent's memory: default deny, a typed error naming the action.
        with pytest.raises(PolicyDenied) as denied:
            await running.api.service.forget_memories("bob", owner="ada", ids=out["ids"])
        assert denied.value.action == "memory.write"
        refused = await running.http.post(
            "/v1/memories", json={"agent_id": "bob", "owner": "ada", "memories": [{"text": "x"}]}
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "policy_denied"
