"""The context service's metrics on ``/metrics`` (memory operations by kind and outcome, the index as a
consumer) and its spans: storing a memory and indexing it are part of the caller's trace."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from symbi_common.telemetry import capture_spans, inject_trace, trace_id_of

from .conftest import Running


async def test_memory_operations_are_counted_and_traced(running: Running, scrape_metrics: Any) -> None:
    before = await scrape_metrics(running.http)
    memories = [
        {"kind": "long_term", "text": "The capital of France is Paris."},
        {"kind": "short_term", "text": "Met Bob."},
    ]
    with capture_spans() as spans:
        with trace.get_tracer("test").start_as_current_span("agent step") as step:
            r = await running.http.post(
                "/v1/memories", json={"agent_id": "ada", "memories": memories}, headers=dict(inject_trace({}))
            )
        assert r.status_code == 201, r.text
        stored = r.json()
        assert await running.index.wait_for(stored["sequence"])
    found = await running.post(
        "/v1/memories/query", {"agent_id": "ada", "query": "capital", "min_sequence": stored["sequence"]}
    )
    assert found["results"]
    bad = await running.http.post("/v1/memories", json={"agent_id": "ada", "memories": []})
    assert bad.status_code == 422, bad.text
    after = await scrape_metrics(running.http)

    assert after.since(before, "symbi_context_operations_total", operation="store", outcome="ok") == 1
    assert (
        after.since(before, "symbi_context_operations_total", operation="store", outcome=bad.json()["error"]["code"])
        == 1
    )
    assert after.since(before, "symbi_context_operations_total", operation="retrieve", outcome="ok") == 1
    assert after.since(before, "symbi_context_operation_seconds_count", operation="store") == 2
    assert after.since(before, "symbi_events_consumed_total", consumer="context_index") >= 1
    assert after.since(before, "symbi_event_lag_seconds_count", consumer="context_index") >= 1

    mine = {s.context.span_id: s for s in spans if trace_id_of(s) == trace_id_of(step)}
    (store,) = [s for s in mine.values() if s.name == "context.store"]
    assert store.parent is not None
    assert mine[store.parent.span_id].name == "POST /v1/memories"
    indexed = [s for s in mine.values() if s.name == "context.index"]
    assert len(indexed) == 2  # one event per memory, appended together
    for span in indexed:
        assert span.attributes is not None
        assert span.attributes["symbi.subject"] == "evt.memory.ada"
        assert span.parent is not None
        assert span.parent.span_id == store.context.span_id
