"""``GET /v1/memories`` asked by an operator: the content is the operator's to read, not the agent's.

Behind the real embedded decision point with the shipped baseline policy set (a real ``policy.set_registered``
event signed with the policy service's key): the agent may read its own memory (baseline-agents-own-memory),
so the memories are listed, but their text is withheld from auditors and operators — the baseline lets only
admins read memory (baseline-admins-read-memory). A query over HTTP answers from what both the agent and the
operator may read. A policy granting an operator ``memory.read`` shows it the text. The agent's own path (the
sandbox-agent's memory operations, ``cmd.context.*`` over NATS) is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from symbi_common.eventstore import EventStore
from symbi_common.operator_tokens import bearer_header
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings

from .conftest import service_env

BASELINE = Path(__file__).resolve().parents[3] / "services" / "policy" / "src" / "symbi_policy" / "baseline.cedar"
#: What a deployment adds for its data protection officer to read agents' memories through the console.
DPO_READS_MEMORY = """
@id("dpo-reads-memory")
permit(principal == User::"dpo", action == Action::"memory.read", resource is Memory);
"""
SECRET = "Ada's patient is allergic to penicillin"


async def _register(store: EventStore, set_id: str, cedar: str) -> None:
    compile_policies(set_id, cedar)  # the policy service would refuse an invalid set; so does this test
    event = PolicySetRegistered(set_id=set_id, cedar=cedar)
    await store.append(AGGREGATE_TYPE, set_id, [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)


async def test_an_operator_reads_memory_text_only_where_the_policy_allows_it_the_operator(
    make_store: Callable[..., Awaitable[EventStore]],
    provisioned: NatsClient,
    nats_url: str,
    keys_dir: Path,
    tmp_path: Path,
    start: Any,
    issue_operator_token: Callable[..., str],
) -> None:
    policy = await make_store("policy")
    await _register(policy, "baseline", BASELINE.read_text())
    env = service_env(
        nats_url,
        keys_dir,
        tmp_path / "vectors",
        SYMBI_POLICY__ENFORCEMENT="embedded",
        SYMBI_POLICY__DECISION_LOG="false",
    )
    async for running in start(load_settings(env=env)):
        # The agent stores its memory as the sandbox-agent does for it: cmd.context.store over NATS.
        memory = {"kind": "long_term", "text": SECRET, "tags": ["patient-7"], "metadata": {"ward": "b"}}
        stored = await running.client.call("context", "store", {"agent_id": "ada", "memories": [memory]}, dict)
        await running.index.wait_for(stored["sequence"])

        http = running.http

        async def listed(role: str, name: str, http: Any = http, **params: str) -> dict[str, Any]:
            headers = bearer_header(issue_operator_token(role=role, name=name))
            response = await http.get("/v1/memories", params={"agent_id": "ada", **params}, headers=headers)
            assert response.status_code == 200, response.text
            page: dict[str, Any] = response.json()
            return page

        async def queried(role: str, name: str, http: Any = http) -> list[Any]:
            headers = bearer_header(issue_operator_token(role=role, name=name))
            body = {"agent_id": "ada", "query": "what is the patient allergic to"}
            response = await http.post("/v1/memories/query", json=body, headers=headers)
            assert response.status_code == 200, response.text
            return [r["text"] for r in response.json()["results"]]

        # An auditor or an operator sees that the memory is there, not what it says, and its queries find nothing.
        for role, name in (("auditor", "ann"), ("operator", "otto")):
            page = await listed(role, name)
            assert SECRET not in str(page), (role, page)
            assert (page["denied"], page.get("text_withheld"), page["total"]) == (False, True, 1), (role, page)
            [item] = page["items"]
            assert (item["id"], item["kind"]) == (stored["ids"][0], "long_term")
            assert (item["text"], item["tags"], item["metadata"], item["text_withheld"]) == (None, [], {}, True)
            assert await queried(role, name) == [], role
        # An admin reads it (baseline-admins-read-memory), listed and queried.
        page = await listed("admin", "root")
        assert (page["text_withheld"], [m["text"] for m in page["items"]]) == (False, [SECRET])
        assert page["items"][0]["tags"] == ["patient-7"]
        assert await queried("admin", "root") == [SECRET]

        # Another owner's memory the agent itself may not read: refused for the agent, as before.
        refused = await listed("admin", "root", owner="bob")
        assert (refused["denied"], refused["items"]) == (True, [])

        # The agent's own path is unchanged: its memory operations over NATS read the text.
        recalled = await running.client.call(
            "context", "retrieve", {"agent_id": "ada", "query": "what is the patient allergic to"}, dict
        )
        assert [r["text"] for r in recalled["results"]] == [SECRET]

        # A policy allowing one operator memory.read shows it the text; the auditor still sees none.
        await _register(policy, "memory-readers", DPO_READS_MEMORY)
        for _ in range(250):
            page = await listed("auditor", "dpo")
            if not page["text_withheld"]:
                break
            await asyncio.sleep(0.02)
        assert [(m["text"], m["tags"], m["text_withheld"]) for m in page["items"]] == [(SECRET, ["patient-7"], False)]
        assert (await listed("auditor", "ann"))["items"][0]["text"] is None
