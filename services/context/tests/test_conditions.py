"""Allow-with-conditions at the context service: a condition it enforces is honoured, any other denies."""

from __future__ import annotations

from typing import Any

import pytest
from symbi_common.decisions import AllowWithConditions, Condition, Decision, DecisionRequest
from symbi_common.errors import PolicyDenied


class Conditioned:
    """Allows everything, with the given conditions attached."""

    def __init__(self, *conditions: Condition) -> None:
        self.conditions = conditions

    @property
    def version(self) -> int:
        return 1

    async def decide(self, request: DecisionRequest) -> Decision:
        return AllowWithConditions(conditions=self.conditions, policies=("conditioned",), policy_version=1)

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [await self.decide(r) for r in requests]


async def test_a_write_keeps_log_full_and_refuses_what_it_cannot_enforce(running: Any) -> None:
    service = running.api.service
    service.decisions = Conditioned(Condition(kind="log_full", policy="keep-all"))
    written = await running.client.call(
        "context", "store", {"agent_id": "ada", "memories": [{"text": "The lab opens at nine."}]}, dict
    )
    assert written["ids"]

    service.decisions = Conditioned(Condition(kind="redact", params={"fields": ["text"]}, policy="hide-text"))
    with pytest.raises(PolicyDenied) as err:
        await running.client.call("context", "store", {"agent_id": "ada", "memories": [{"text": "x"}]}, dict)
    assert err.value.details["reason_code"] == "unenforceable_condition"
    assert "context.memory_write cannot enforce redact (policy hide-text)" in str(err.value)

    query = {"agent_id": "ada", "query": "when does the lab open", "min_sequence": written["sequence"]}
    service.decisions = Conditioned()  # no condition: the memory is found
    assert [r["id"] for r in (await running.client.call("context", "retrieve", query, dict))["results"]] == written[
        "ids"
    ]
    # A read is allowed with a condition the context service cannot enforce: the memories are left out.
    service.decisions = Conditioned(Condition(kind="require_approval", policy="ask-first"))
    found = await running.client.call("context", "retrieve", query, dict)
    assert found["results"] == []
