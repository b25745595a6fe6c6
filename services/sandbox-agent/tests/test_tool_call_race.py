"""A tool call is made only if the tool is still callable, with the definition the policy decision was about,
once the decision is in: an operator may revoke it (or its server be replaced) while the call is decided."""

from __future__ import annotations

from typing import Any

from symbi_common.decisions import Allow, DecisionRecord, DecisionRequest
from symbi_contracts.agent_protocol import Request, Result
from symbi_sandbox_agent.tool_ops import ToolOps
from symbi_sandbox_agent.tools.service import ToolService

from .test_tool_listing_refusals import approved_and_callable, breakable, store, tools  # noqa: F401 (fixtures)


class Recorded:
    """The protocol server's side: what the gateway records of each request."""

    agent_id = "agent-1"

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    async def _record(
        self, seq: int, action: str, resource: str, context: Any, record: Any, outcome: Any, detail: str
    ) -> None:
        self.records.append((outcome, detail))


async def test_a_tool_revoked_while_its_call_is_decided_is_not_called(tools: ToolService) -> None:  # noqa: F811
    await tools.register(breakable("brk"))
    await approved_and_callable(tools, "brk.add")

    async def revoking(question: DecisionRequest) -> tuple[Allow, DecisionRecord]:
        await tools.revoke("brk.add", by="op", reason="found a problem")  # while the decision is being made
        return Allow(policy_version=1), DecisionRecord(action=question.action, effect="allow", policy_version=1)

    served = Recorded()
    ops = ToolOps(served, revoking, lambda: tools, lambda *_: True)  # every record fits here
    call = Request(id=1, op="tools.call", args={"name": "brk.add", "arguments": {"a": 2, "b": 3}})
    answer = await ops.answer(1, call, "tools.call")
    assert not isinstance(answer, Result), answer
    assert answer.error.code == "tool_not_approved"  # type: ignore[union-attr]
    assert [outcome for outcome, _ in served.records] == ["failed"]
