"""Logs, traces and metrics.

- Logs: structlog, JSON lines by default, with context bound per message/request through contextvars.
- Traces: OpenTelemetry; the W3C ``traceparent`` travels in HTTP and NATS headers (outside the signed
  bytes); spans are exported over OTLP/HTTP when an endpoint is configured. Consumers of stored events
  continue the trace each event carries (:func:`continue_trace`), so one task is one trace across every
  service; without an exporter they only pass the context on (no span per message).
- Metrics: prometheus-client, served at ``/metrics`` by every service; the shared ones are defined here.

What is traced and every metric name: ``docs/observability.md``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from prometheus_client import Counter, Gauge, Histogram
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(service: str, level: str = "info", fmt: str = "json") -> None:
    """Structured logs to stderr; every line carries the service name."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Without the frames' locals (they hold what agents sent: memory text, message bodies) and at most
            # 20 frames: an agent's deep request must not make one log line of megabytes.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False, max_frames=20)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # Not cached: a logger bound on first use would keep that configuration for good, so a later
        # reconfiguration (another service in the same process, a log-capturing test) would not reach it.
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


_provider: TracerProvider | None = None
_exporting_to: set[str] = set()
#: Span lists of :func:`capture_spans` blocks in progress.
_sinks: list[list[ReadableSpan]] = []
_capturing = False


def configure_tracing(service: str, otlp_endpoint: str = "") -> TracerProvider:
    """Install this process's tracer provider for ``service``; export over OTLP/HTTP if an endpoint is set.

    OpenTelemetry allows one global provider per process, so a second call (a service restarted in
    the same process, as in tests) reuses it and only adds an exporter for a new endpoint. Batches go
    out every ``OTEL_BSP_SCHEDULE_DELAY`` ms (default 5000).
    """
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": f"symbi-{service}"}))
        trace.set_tracer_provider(_provider)
    if otlp_endpoint and otlp_endpoint not in _exporting_to:
        _provider.add_span_processor(BatchSpanProcessor(otlp_span_exporter(otlp_endpoint)))
        _exporting_to.add(otlp_endpoint)
    return _provider


def otlp_span_exporter(otlp_endpoint: str) -> SpanExporter:
    """The OTLP/HTTP exporter to ``otlp_endpoint`` (``/v1/traces`` added unless there).

    Over TLS it trusts the CA the standard ``OTEL_EXPORTER_OTLP_CERTIFICATE`` names and shows the client certificate
    of ``OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`` / ``_CLIENT_KEY`` (a deployment's services: their own ``/tls``
    files, mutual TLS to Jaeger), and only those: its HTTP session ignores the environment, since ``requests`` lets
    ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` override a session's own CA (psf/requests#3829).
    """
    import requests  # type: ignore[import-untyped]  # (no stubs here; only its Session is used)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    session = requests.Session()
    session.trust_env = False
    return OTLPSpanExporter(endpoint=endpoint, session=session)


def tracing_enabled() -> bool:
    """Whether finished spans go anywhere (an OTLP exporter, or a :func:`capture_spans` block).

    Per-message spans are only worth their cost (about 25 us each with the SDK) when they are
    exported; without an exporter the consumers only pass the incoming trace context on.
    """
    return bool(_exporting_to) or bool(_sinks)


class _Capture(SpanProcessor):
    """Hands every finished span to the open :func:`capture_spans` blocks."""

    def on_end(self, span: ReadableSpan) -> None:
        for sink in _sinks:
            sink.append(span)


@contextmanager
def capture_spans() -> Iterator[list[ReadableSpan]]:
    """Collect the spans finished inside the block (tracing is enabled meanwhile), like structlog's
    ``capture_logs``: for tests that check what a component traces without an OTLP receiver."""
    global _capturing
    provider = configure_tracing("test") if _provider is None else _provider
    if not _capturing:
        provider.add_span_processor(_Capture())
        _capturing = True
    sink: list[ReadableSpan] = []
    _sinks.append(sink)
    try:
        yield sink
    finally:
        _sinks.remove(sink)


def flush_tracing(timeout_ms: int = 5000) -> None:
    """Export every finished span now (on shutdown; the provider itself lives as long as the process)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def trace_id_of(span: trace.Span | ReadableSpan) -> str:
    """The span's trace id as the 32 hex digits Jaeger shows ("" for no span)."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx is not None and ctx.is_valid else ""


def inject_trace(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current W3C trace context (``traceparent``) to NATS or HTTP headers."""
    propagate.inject(headers)
    return headers


async def trace_http_request(request: Any) -> None:
    """An httpx ``request`` event hook: the request carries the caller's current trace context."""
    propagate.inject(request.headers)


def extract_trace(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by incoming headers (an empty context if none)."""
    return propagate.extract(dict(headers or {}))


_TRACEPARENT = "traceparent"
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_ids = RandomIdGenerator()


def request_trace(raw_headers: Iterable[tuple[bytes, bytes]]) -> otel_context.Context:
    """The trace context of an incoming HTTP request (ASGI headers): the caller's, else a new trace of its own
    (a non-recording span: nothing is exported, but what the request appends carries the new trace id)."""
    carried = {k.decode(): v.decode("latin-1") for k, v in raw_headers if k in _TRACE_HEADERS}
    if _TRACEPARENT in carried:
        return extract_trace(carried)
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            _ids.generate_trace_id(), _ids.generate_span_id(), is_remote=False, trace_flags=trace.TraceFlags(1)
        )
    )
    return trace.set_span_in_context(span)


@contextmanager
def continue_trace(
    name: str,
    headers: Mapping[str, str] | None,
    *,
    kind: trace.SpanKind = trace.SpanKind.CONSUMER,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[trace.Span]:
    """Handle one incoming message (stored event, work item, reply) as a span of the trace it carries.

    The parent is the W3C context in the message's headers, so a task's trace runs on through every
    service that reacts to its events; events appended inside the block carry this span onward.
    Without a ``traceparent`` the span starts a trace of its own.

    While no span is exported (:func:`tracing_enabled` is false) no span is made: the block runs in
    the incoming context, so what it appends still carries the caller's trace onward, at the cost of
    parsing one header.
    """
    exported = tracing_enabled()
    if not exported and _TRACEPARENT not in (headers or {}):
        yield trace.INVALID_SPAN
        return
    token = otel_context.attach(extract_trace(headers))
    try:
        if exported:
            with trace.get_tracer("symbi").start_as_current_span(name, kind=kind, attributes=attributes) as span:
                yield span
        else:
            yield trace.get_current_span()
    finally:
        otel_context.detach(token)


@contextmanager
def traced(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[trace.Span]:
    """A span for one step (a decision, an initialization) as a child of the current one; nothing
    (an invalid span) while spans are not exported."""
    if not tracing_enabled():
        yield trace.INVALID_SPAN
        return
    with trace.get_tracer("symbi").start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


@contextmanager
def outside_traces() -> Iterator[None]:
    """Run the block in no trace at all: for starting long-lived work (a follower, a batching loop) that
    must not make every later message part of the trace of whoever happened to start it."""
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def command_trace(
    service: str, name: str, attributes: Mapping[str, str | int | float | bool] | None = None
) -> Iterator[trace.Span]:
    """The root span of a command-line command: tracing configured from ``OTEL_EXPORTER_OTLP_ENDPOINT``
    for ``symbi-<service>``, the span current inside the block, every span exported before it returns."""
    configure_tracing(service, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    try:
        with trace.get_tracer("symbi.cli").start_as_current_span(name, attributes=attributes) as span:
            yield span
    finally:
        flush_tracing()


# --- metrics shared by every service ---------------------------------------------------------------
#
# Every service serves these at ``/metrics`` (prometheus-client's default registry); the services add
# their own (agents by state, tasks by outcome, audit findings …). Labels stay few and bounded.

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

COMMANDS = Counter("symbi_commands_total", "Commands handled", ["service", "action", "outcome"])
COMMAND_SECONDS = Histogram(
    "symbi_command_seconds", "Command handling latency", ["service", "action"], buckets=_LATENCY_BUCKETS
)
EVENTS_APPENDED = Counter("symbi_events_appended_total", "Events appended", ["service", "aggregate_type"])
EVENT_APPEND_SECONDS = Histogram(
    "symbi_event_append_seconds",
    "Latency of one append (seal, publish, JetStream ack) of one or several events",
    ["service", "aggregate_type"],
    buckets=_LATENCY_BUCKETS,
)
PROJECTION_POSITION = Gauge("symbi_projection_position", "Last stream sequence applied", ["projection"])
PROJECTION_EVENTS = Counter("symbi_projection_events_total", "Events applied by projections", ["projection"])
EVENTS_CONSUMED = Counter(
    "symbi_events_consumed_total",
    "Stored events processed by a consumer (projection, follower, verifier, index)",
    ["consumer"],
)
EVENT_LAG_SECONDS = Histogram(
    "symbi_event_lag_seconds",
    "Time from an event's storage in the stream to its processing by a consumer",
    ["consumer"],
    buckets=_LAG_BUCKETS,
)
REJECTED_EVENTS = Counter(
    "symbi_rejected_events_total", "Stored events that failed verification or decoding", ["consumer", "reason"]
)
POLICY_DECISIONS = Counter(
    "symbi_policy_decisions_total",
    "Policy decisions by decision point (embedded, remote, service), action and outcome (allow, deny, conditions)",
    ["point", "action", "outcome"],
)
POLICY_DECISION_SECONDS = Histogram(
    "symbi_policy_decision_seconds",
    'Latency of one policy decision (a batch counts once, under action "batch")',
    ["point", "action"],
    buckets=_DECISION_BUCKETS,
)
SECURITY_EVENTS = Counter(
    "symbi_security_events_total",
    "Security-relevant events: policy denials, stored events failing verification, audit findings",
    ["kind"],
)


def observe_consumed(consumer: str, stored_at: Any, count: int = 1) -> None:
    """Count ``count`` events processed by ``consumer`` and their lag since ``stored_at`` (the JetStream
    message's timestamp, a datetime; None if unknown)."""
    EVENTS_CONSUMED.labels(consumer).inc(count)
    if stored_at is not None:
        lag = max(0.0, time.time() - stored_at.timestamp())
        EVENT_LAG_SECONDS.labels(consumer).observe(lag)
