"""Model usage in the reports: the built-in ``models`` framework lists every budget event of the range and sums
the reconciled calls per agent and model (from their payloads, which the audit service may decrypt)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from symbi_audit.reports import usage_rows
from symbi_common.sealing import NEW_AGGREGATE
from symbi_contracts.models.events import CODEC, BudgetReconciled, BudgetReleased, BudgetReserved

from .conftest import Running


def reserved(rid: str, agent: str, model: str) -> BudgetReserved:
    return BudgetReserved(reservation_id=rid, agent_id=agent, task_id="t1", model=model, tokens=100, micro_usd=50)


def reconciled(rid: str, agent: str, model: str, tokens: tuple[int, int], micro_usd: int) -> BudgetReconciled:
    return BudgetReconciled(
        reservation_id=rid,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        micro_usd=micro_usd,
        agent_id=agent,
        model=model,
    )


def test_usage_rows_sum_per_agent_and_model() -> None:
    rows = usage_rows(
        [
            {"agent_id": "b", "model": "p/m", "input_tokens": 1, "output_tokens": 2, "micro_usd": 3},
            {"agent_id": "a", "model": "p/m", "input_tokens": 4, "output_tokens": 5, "micro_usd": 6, "estimated": True},
            {"agent_id": "b", "model": "p/m", "input_tokens": 10, "output_tokens": 20, "micro_usd": 30},
        ]
    )
    assert [(r["agent_id"], r["calls"], r["input_tokens"], r["micro_usd"], r["estimated_calls"]) for r in rows] == [
        ("a", 1, 4, 6, 1),
        ("b", 2, 11, 33, 0),
    ]


async def test_the_models_report_sums_usage_per_agent_and_model(running: Running, make_store: Any) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    store = await make_store("sandbox-agent")
    events = [
        reserved("r1", "agent-1", "test/small"),
        reserved("r2", "agent-1", "test/small"),
        reserved("r3", "agent-2", "test/other"),
        reconciled("r1", "agent-1", "test/small", (7, 5), 17),
        BudgetReleased(reservation_id="r2", reason="provider answered 500"),
        reconciled("r3", "agent-2", "test/other", (3, 1), 5),
    ]
    recs = await store.append("budget", "20261205-default", events, CODEC, expected=NEW_AGGREGATE)
    await running.wait_for(recs[-1].sequence)
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    report = await running.json("/v1/audit/reports/models", since=start.isoformat(), until=until)
    [section] = report["sections"]
    assert section["count"] == 6
    assert [(u["agent_id"], u["model"], u["calls"], u["input_tokens"], u["output_tokens"], u["micro_usd"])
            for u in section["usage"]] == [("agent-1", "test/small", 1, 7, 5, 17), ("agent-2", "test/other", 1, 3, 1, 5)]  # fmt: skip
    resp = await running.http.get(
        "/v1/audit/reports/models", params={"since": start.isoformat(), "until": until, "format": "csv"}
    )
    table = list(csv.reader(io.StringIO("\n".join(resp.text.splitlines()[4:]))))
    assert ["model usage: usage", "agent-1", "test/small", "1", "7", "5", "17", "0"] in table
