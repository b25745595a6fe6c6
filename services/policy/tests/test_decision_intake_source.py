"""A decision-log batch's source must be exactly ``<sender>-<process>``: no service may speak for another
whose name it prefixes (a ``sandbox`` service writing into the logs of ``sandbox-agent-*`` processes)."""

from __future__ import annotations

import msgspec
import pytest
from symbi_common.decisions import Allow, DecisionRecord, DecisionRequest, EntityRef
from symbi_common.policy.decision_log import LogDecisionsTyped
from symbi_common.policy.events import LoggedDecision
from symbi_policy.decision_intake import refusal

from .conftest import RunningPolicy, stored_decisions


def _entry(service: str, principal: str) -> LoggedDecision:
    request = DecisionRequest(
        principal=EntityRef(type="Agent", id=principal), action="tool.invoke", resource=EntityRef(type="Tool", id="t")
    )
    return LoggedDecision(
        request=request, record=DecisionRecord.of(request, Allow(policies=("p",))), at_ns=1, service=service
    )


def _body(source: str, service: str, principal: str = "a", batch_id: str = "b") -> LogDecisionsTyped:
    return LogDecisionsTyped(source=source, batch_id=batch_id, entries=[_entry(service, principal)])


@pytest.mark.parametrize(
    ("subject", "source"),
    [
        ("dlog.sandbox", "sandbox-agent-1a2b3c4d5e6f"),  # a prefix of another service's name
        ("dlog.sandbox", "sandbox-"),
        ("dlog.sandbox", "sandbox"),
        ("dlog.sandbox", "sandboxagent-1a2b"),
        ("dlog.scheduler", "scheduler-x-y"),
    ],
)
def test_a_source_that_is_not_exactly_a_process_of_the_sender_is_refused(subject: str, source: str) -> None:
    service = subject.removeprefix("dlog.")
    assert "is not a process of" in refusal(subject, _body(source, service))


@pytest.mark.parametrize(
    ("subject", "source"),
    [
        ("dlog.sandbox-agent", "sandbox-agent-1a2b3c4d5e6f"),
        ("dlog.scheduler", "scheduler-x"),
        ("dlog.context", "context-y"),
    ],
)
def test_a_process_of_the_sender_is_accepted(subject: str, source: str) -> None:
    assert refusal(subject, _body(source, subject.removeprefix("dlog."))) == ""


async def test_a_service_cannot_write_into_the_log_of_one_whose_name_it_prefixes(policy: RunningPolicy) -> None:
    js = policy.runtime.js
    forged = _body("sandbox-agent-1a2b3c4d5e6f", "sandbox", principal="forged", batch_id="forged")
    genuine = _body("sandbox-1a2b3c4d5e6f", "sandbox", principal="genuine", batch_id="genuine")
    await js.publish("dlog.sandbox", msgspec.json.encode(forged))
    await js.publish("dlog.sandbox", msgspec.json.encode(genuine))
    logged, _ = await stored_decisions(policy.runtime)
    principals = [e.request.principal.id for event in logged for e in event.entries]
    assert principals.count("genuine") == 1
    assert "forged" not in principals
    assert policy.app.state.decision_intake.refused == 1
