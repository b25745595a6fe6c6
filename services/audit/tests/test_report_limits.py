"""Bounds of reports and queries: a custom framework's size, the rows and usage reads a report holds, times that
have no UTC form, and a ``min_sequence`` the audit log has not reached."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from symbi_audit.reports import MAX_PATTERNS, MAX_SECTIONS
from symbi_common.sealing import NEW_AGGREGATE
from symbi_contracts.models.events import CODEC

from .conftest import Running, Writer
from .test_model_usage import reconciled


def _window(start: dt.datetime) -> dict[str, str]:
    return {"since": start.isoformat(), "until": (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()}


def _framework(sections: int, patterns: int = 1) -> str:
    types = ", ".join(f'"t{i}.*"' for i in range(patterns))
    return "name = 'big'\n" + "".join(
        f"[[sections]]\nname = 's{i}'\nevent_types = [{types}]\n" for i in range(sections)
    )


async def test_a_custom_framework_is_bounded_in_sections_and_patterns(running: Running) -> None:
    """Every section repeats the rows it matches: a framework of many sections (or patterns) is refused up front."""
    for body in (_framework(MAX_SECTIONS + 1), _framework(2, MAX_PATTERNS // 2 + 1)):
        resp = await running.http.post("/v1/audit/reports/custom", content=body)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "framework_invalid"
    ok = await running.http.post("/v1/audit/reports/custom", content=_framework(MAX_SECTIONS))
    assert ok.status_code == 200, ok.text


async def test_a_report_over_the_row_limit_is_refused_naming_it(running: Running, writer: Writer) -> None:
    """A report reads at most its row limit of events (then says to narrow since/until), and its sections together
    hold at most as many rows (a custom framework selecting every event twice)."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    last = (await writer.agent("lim1", 5))[-1]
    await running.wait_for(last)
    window = _window(start)
    running.service.max_report_rows = 4
    resp = await running.http.get("/v1/audit/reports/sox", params=window)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "report_too_large"
    assert "4" in error["message"]
    assert "since/until" in error["message"]
    running.service.max_report_rows = 6
    twice = "name = 'x'\n[[sections]]\nname = 'a'\nevent_types = ['*']\n[[sections]]\nname = 'b'\nevent_types = ['*']\n"
    resp = await running.http.post("/v1/audit/reports/custom", content=twice, params=window)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "report_too_large"
    running.service.max_report_rows = 10
    resp = await running.http.post("/v1/audit/reports/custom", content=twice, params=window)
    assert resp.status_code == 200, resp.text


async def test_usage_reads_are_bounded(running: Running, make_store: Any) -> None:
    """A usage section reads each ``budget.reconciled`` payload from the stream: past the limit it is refused."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    store = await make_store("sandbox-agent")
    events = [reconciled(f"r{i}", "agent-1", "test/small", (1, 1), 1) for i in range(3)]
    recs = await store.append("budget", "20261207-limits", events, CODEC, expected=NEW_AGGREGATE)
    await running.wait_for(recs[-1].sequence)
    window = _window(start)
    running.service.max_usage_lookups = 2
    resp = await running.http.get("/v1/audit/reports/models", params=window)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "report_too_large"
    running.service.max_usage_lookups = 3
    report = await running.json("/v1/audit/reports/models", **window)
    assert report["sections"][0]["usage"][0]["calls"] == 3


async def test_the_report_time_filter_has_an_index(running: Running) -> None:
    row = await running.service.pool.fetchrow(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'audit' AND indexname = 'events_report_time'"
    )
    assert row is not None
    assert "COALESCE(occurred_at, stored_at)" in row["indexdef"]


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"])
async def test_a_time_without_a_utc_form_is_a_bad_query(running: Running, value: str) -> None:
    for path, field in (
        ("/v1/audit/events", "since"),
        ("/v1/audit/events", "until"),
        ("/v1/audit/reports/sox", "until"),
    ):
        resp = await running.http.get(path, params={field: value})
        assert resp.status_code == 422, (path, field, resp.text)
        assert resp.json()["error"]["code"] == "bad_query"
        assert resp.json()["error"]["details"]["field"] == field


async def test_min_sequence_not_reached_is_a_retryable_error(
    running: Running, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read with ``min_sequence`` never answers without the event: if the log does not reach it within the wait,
    503 ``audit_behind`` (retry later)."""
    first = (await writer.agent("mb1"))[-1]
    await running.wait_for(first)
    later = (await writer.agent("mb1"))[-1]

    async def never(sequence: int, timeout: float = 5.0) -> bool:
        return False

    monkeypatch.setattr(running.service.runner, "wait_for", never)
    resp = await running.http.get("/v1/audit/events", params={"min_sequence": later, "agent": "mb1"})
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "audit_behind"
