"""The audit service's metrics on ``/metrics`` and its spans: every verified event that carries a trace gets
an ``audit.verify`` span in it; findings count per kind and as security events."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from symbi_common.telemetry import capture_spans, trace_id_of

from .conftest import Running, Writer


async def test_verified_events_join_their_traces_and_findings_are_counted(
    running: Running, writer: Writer, provisioned: NatsClient, scrape_metrics: Any
) -> None:
    before = await scrape_metrics(running.http)
    with capture_spans() as spans:
        with trace.get_tracer("test").start_as_current_span("submit") as submit:
            traced = await writer.task("t-traced", count=2)
        untraced = await writer.agent("a-untraced")
        await provisioned.publish("evt.agent.forged", b"not a stored event")
        last = (await writer.agent("a-untraced"))[-1]
        await running.wait_for(last)
    after = await scrape_metrics(running.http)

    verified = [s for s in spans if s.name == "audit.verify"]
    assert sorted(s.attributes["symbi.sequence"] for s in verified if s.attributes) == traced
    for span in verified:
        assert trace_id_of(span) == trace_id_of(submit)
        assert span.parent is not None
        assert span.parent.span_id == submit.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["symbi.audit.verified"] is True
    assert untraced[0] not in [s.attributes["symbi.sequence"] for s in verified if s.attributes]

    assert after.since(before, "symbi_audit_events_total", outcome="verified") == 4
    assert after.since(before, "symbi_audit_events_total", outcome="failed") == 1
    kinds = {
        labels: v - before.get((name, labels), 0.0)
        for (name, labels), v in after.items()
        if name == "symbi_audit_findings_total" and v - before.get((name, labels), 0.0)
    }
    assert list(kinds.values()) == [1.0], kinds
    assert after.since(before, "symbi_security_events_total", kind="audit_finding") == 1
    assert after.since(before, "symbi_events_consumed_total", consumer="audit_verifier") == 5
    assert after.since(before, "symbi_event_lag_seconds_count", consumer="audit_verifier") >= 1
    assert after.value("symbi_audit_position") == last
