"""What-if costs what it replays, not the whole decision log; its body is bounded like every other one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import symbi_common.streams as streams
from symbi_common.decisions import Allow, DecisionRecord, DecisionRequest, EntityRef
from symbi_common.policy.decision_log import LogDecisionsTyped
from symbi_common.policy.events import LoggedDecision

from .conftest import RunningPolicy

BATCHES = 150


def _entry(principal: str) -> LoggedDecision:
    request = DecisionRequest(
        principal=EntityRef(type="Agent", id=principal), action="tool.invoke", resource=EntityRef(type="Tool", id="t")
    )
    return LoggedDecision(
        request=request, record=DecisionRecord.of(request, Allow(policies=("p",))), at_ns=1, service="scheduler"
    )


async def test_what_if_reads_only_the_newest_decisions(policy: RunningPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    service = policy.service
    for i in range(BATCHES):
        await service.log_decisions(LogDecisionsTyped(source="hardening", batch_id=f"b{i}", entries=[_entry(f"a{i}")]))
    reads: list[int] = []
    opens: list[int] = []
    raw, open_one = streams._raw, service.store.open_one

    def counted_raw(msg: Any) -> streams.RawMessage:
        message = raw(msg)
        if message.subject.startswith("evt.policy.decisions."):
            reads.append(message.sequence)
        return message

    async def counted_open(data: bytes, subject: str, sequence: int, codec: Any) -> Any:
        if subject.startswith("evt.policy.decisions."):
            opens.append(sequence)
        return await open_one(data, subject, sequence, codec)

    monkeypatch.setattr(streams, "_raw", counted_raw)
    monkeypatch.setattr(service.store, "open_one", counted_open)

    from symbi_policy.application import WhatIfRequest

    strict = '@id("no-tools")\nforbid(principal, action == Action::"tool.invoke", resource);'
    report = await service.what_if(WhatIfRequest(set_id="lockdown", cedar=strict, limit=1))
    assert report.evaluated == 1
    assert [c.request.principal.id for c in report.changes] == [f"a{BATCHES - 1}"]
    assert len(opens) == 1
    assert len(reads) <= 64, f"{len(reads)} decision-log messages fetched for one decision"

    # Oldest first, exactly the newest ones, also when they span windows.
    history = await service.history(100)
    assert [e.request.principal.id for e in history] == [f"a{i}" for i in range(BATCHES - 100, BATCHES)]


async def test_what_if_runs_one_at_a_time_off_the_event_loop(policy: RunningPolicy) -> None:
    from symbi_policy.application import MAX_WHAT_IF, WhatIfRequest

    service = policy.service
    assert service.what_if_limit <= MAX_WHAT_IF <= 2_000
    for i in range(3):
        await service.log_decisions(LogDecisionsTyped(source="hardening", batch_id=f"c{i}", entries=[_entry(f"c{i}")]))
    loop_ticks = 0

    async def ticker() -> None:
        nonlocal loop_ticks
        while True:
            loop_ticks += 1
            await asyncio.sleep(0)

    tick = asyncio.create_task(ticker())
    try:
        reports = await asyncio.gather(
            *(service.what_if(WhatIfRequest(set_id="lockdown", cedar=None, limit=3)) for _ in range(3))
        )
    finally:
        tick.cancel()
    assert [r.evaluated for r in reports] == [3, 3, 3]
    assert loop_ticks > 0


async def test_a_deeply_nested_what_if_body_is_a_bad_request(policy: RunningPolicy) -> None:
    body = b'{"cedar": "x", "limit": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await policy.http.post("/v1/policy-sets/lockdown/what-if", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    huge = await policy.http.post("/v1/policy-sets/lockdown/what-if", json={"limit": 2**70})
    assert huge.status_code == 400, huge.text


async def test_a_what_if_with_cedar_that_crashed_the_parser_is_refused(policy: RunningPolicy) -> None:
    cedar = "permit(principal, action, resource) when { " + "(" * 800 + "true" + ")" * 800 + " };"
    response = await policy.http.post("/v1/policy-sets/lockdown/what-if", json={"cedar": cedar})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "policy_rejected"
