"""Traces and metrics of the shared building blocks, on real JetStream and PostgreSQL.

- A projection applies each event as a span of the trace that appended it, and counts it with its lag.
- Without an exporter no span is made, yet a consumer still passes the incoming trace on to what it appends.
- The embedded decision point records a ``policy.decide`` span and counts decisions by action and outcome.
- Long-lived work started inside a request (the decision log's loop) belongs to no trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from prometheus_client import REGISTRY
from symbi_common.decisions import DecisionRequest, EntityRef
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_common.policy.follower import PolicyFollower
from symbi_common.policy.points import EmbeddedDecisionPoint
from symbi_common.projection import ProjectionRunner
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_common.telemetry import capture_spans, continue_trace, outside_traces, trace_id_of, tracing_enabled

MakeStore = Callable[..., Awaitable[EventStore]]


class Noted(Event, tag="test.noted"):
    n: int


codec: EventCodec[Noted] = EventCodec([Noted])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Seen:
    """A read model that only counts what it applied."""

    name = "seen"
    filter_subjects = ("evt.agent.>",)
    schema = ("CREATE TABLE IF NOT EXISTS seen (sequence bigint PRIMARY KEY)",)
    checks_before_writes = True

    async def apply(self, conn: Any, message: RawMessage) -> None:
        await conn.execute("INSERT INTO seen (sequence) VALUES ($1)", message.sequence)


async def test_a_projection_applies_each_event_in_the_trace_that_appended_it(
    make_store: MakeStore, provisioned: NatsClient, database_url: str
) -> None:
    store = await make_store()
    appended = sample("symbi_events_appended_total", service="lifecycle", aggregate_type="agent")
    append_latencies = sample("symbi_event_append_seconds_count", service="lifecycle", aggregate_type="agent")
    consumed = sample("symbi_events_consumed_total", consumer="seen")
    lags = sample("symbi_event_lag_seconds_count", consumer="seen")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    runner = ProjectionRunner(provisioned.jetstream(), pool, Seen())
    await runner.setup()
    task = asyncio.create_task(runner.run())
    try:
        with capture_spans() as spans:
            with trace.get_tracer("test").start_as_current_span("register") as command:
                (rec,) = await store.append("agent", "a1", [Noted(n=1)], codec, expected=NEW_AGGREGATE)
            untraced = await store.append("agent", "a2", [Noted(n=2), Noted(n=3)], codec, expected=NEW_AGGREGATE)
            assert await runner.wait_for(untraced[-1].sequence, timeout=10)
        applied = [s for s in spans if s.name == "project seen"]
        assert len(applied) == 3
        (ours,) = [s for s in applied if trace_id_of(s) == trace_id_of(command)]
        assert ours.parent is not None
        assert ours.parent.span_id == command.get_span_context().span_id
        assert ours.attributes is not None
        assert ours.attributes["symbi.sequence"] == rec.sequence
        assert ours.kind is trace.SpanKind.CONSUMER
        # Events appended outside any trace start traces of their own, one per event.
        others = [s for s in applied if s is not ours]
        assert all(s.parent is None for s in others)
        assert len({trace_id_of(s) for s in others}) == 2
    finally:
        await runner.stop()
        await asyncio.wait_for(task, 10)
        await pool.close()
    assert sample("symbi_events_appended_total", service="lifecycle", aggregate_type="agent") - appended == 3
    assert (
        sample("symbi_event_append_seconds_count", service="lifecycle", aggregate_type="agent") - append_latencies == 2
    )
    assert sample("symbi_events_consumed_total", consumer="seen") - consumed == 3
    assert sample("symbi_event_lag_seconds_count", consumer="seen") - lags == 3


async def test_without_an_exporter_a_consumer_passes_the_trace_on_without_spans(make_store: MakeStore) -> None:
    assert not tracing_enabled()
    store = await make_store()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    incoming = {"traceparent": f"00-{trace_id}-{parent}-01"}
    with continue_trace("handle", incoming) as span:
        assert not span.is_recording()
        (rec,) = await store.append("agent", "t1", [Noted(n=1)], codec, expected=NEW_AGGREGATE)
    with continue_trace("handle", {}) as span:
        assert not span.get_span_context().is_valid
        (bare,) = await store.append("agent", "t2", [Noted(n=1)], codec, expected=NEW_AGGREGATE)
    stored = {}
    for subject in ("evt.agent.t1", "evt.agent.t2"):
        async for batch in read_subject(store.nc, EVENTS_STREAM, subject):
            stored.update({m.sequence: m.headers for m in batch})
    assert stored[rec.sequence]["traceparent"] == f"00-{trace_id}-{parent}-01"
    assert "traceparent" not in stored[bare.sequence]


POLICIES = """
@id("tools") permit(principal is Agent, action == Action::"tool.invoke", resource is Tool);
@id("no-secrets") @reason("secret data stays put")
forbid(principal, action == Action::"data.read", resource is Data) when { resource has classification && resource.classification == "secret" };
@id("data") @log_full permit(principal is Agent, action == Action::"data.read", resource is Data);
"""


def _point() -> EmbeddedDecisionPoint:
    follower = PolicyFollower(None, None, None)  # type: ignore[arg-type]  # not started: the engine is set here
    follower.engine = PolicyEngine({"test": compile_policies("test", POLICIES)}, 42)
    return EmbeddedDecisionPoint(follower)


def _request(action: str, resource: EntityRef) -> DecisionRequest:
    return DecisionRequest(principal=EntityRef(type="Agent", id="a1"), action=action, resource=resource)


async def test_embedded_decisions_are_traced_and_counted_by_action_and_outcome() -> None:
    point = _point()
    tool = EntityRef(type="Tool", id="grep")
    secret = EntityRef(type="Data", id="d1", attrs={"classification": "secret"})
    plain = EntityRef(type="Data", id="d2", attrs={"classification": "public"})
    before = {
        (action, outcome): sample("symbi_policy_decisions_total", point="embedded", action=action, outcome=outcome)
        for action, outcome in (("tool.invoke", "allow"), ("data.read", "deny"), ("data.read", "conditions"))
    }
    denials = sample("symbi_security_events_total", kind="policy_denial")
    timed = sample("symbi_policy_decision_seconds_count", point="embedded", action="data.read")
    batches = sample("symbi_policy_decision_seconds_count", point="embedded", action="batch")
    with capture_spans() as spans:
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            await point.decide(_request("tool.invoke", tool))
            await point.decide(_request("data.read", secret))
        await point.decide_batch([_request("data.read", plain), _request("data.read", secret)])

    def delta(action: str, outcome: str) -> float:
        now = sample("symbi_policy_decisions_total", point="embedded", action=action, outcome=outcome)
        return now - before[(action, outcome)]

    assert delta("tool.invoke", "allow") == 1
    assert delta("data.read", "deny") == 2
    assert delta("data.read", "conditions") == 1
    assert sample("symbi_security_events_total", kind="policy_denial") - denials == 2
    assert sample("symbi_policy_decision_seconds_count", point="embedded", action="data.read") - timed == 1
    assert sample("symbi_policy_decision_seconds_count", point="embedded", action="batch") - batches == 1

    decides = [s for s in spans if s.name == "policy.decide"]
    assert len(decides) == 2
    assert all(s.parent is not None and s.parent.span_id == caller.get_span_context().span_id for s in decides)
    denied = next(s for s in decides if s.attributes and s.attributes["symbi.policy.action"] == "data.read")
    assert denied.attributes is not None
    assert denied.attributes["symbi.policy.decision"] == "deny"
    assert denied.attributes["symbi.policy.policies"] == ("no-secrets",)
    assert denied.attributes["symbi.policy.reason"] == "secret data stays put"
    assert denied.attributes["symbi.policy.version"] == 42
    (batch,) = [s for s in spans if s.name == "policy.decide_batch"]
    assert batch.attributes is not None
    assert batch.attributes["symbi.policy.denials"] == 1


async def test_work_started_outside_traces_belongs_to_none() -> None:
    with capture_spans() as spans, trace.get_tracer("test").start_as_current_span("request"):
        with outside_traces():
            background = asyncio.get_running_loop().create_task(_later())
        await background
    (later,) = [s for s in spans if s.name == "later"]
    assert later.parent is None


async def _later() -> None:
    await asyncio.sleep(0)
    with trace.get_tracer("test").start_as_current_span("later"):
        pass
