"""Logs, traces and metrics.

- Logs: structlog, JSON lines by default, with context bound per message/request through contextvars.
- Traces: OpenTelemetry; the W3C ``traceparent`` travels in NATS headers (outside the signed bytes);
  spans are exported over OTLP/HTTP when an endpoint is configured.
- Metrics: prometheus-client, served at ``/metrics`` by every service.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import Counter, Gauge, Histogram

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
            structlog.processors.dict_tracebacks,
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


def configure_tracing(service: str, otlp_endpoint: str = "") -> TracerProvider:
    """Install this process's tracer provider for ``service``; export over OTLP/HTTP if an endpoint is set.

    OpenTelemetry allows one global provider per process, so a second call (a service restarted in
    the same process, as in tests) reuses it and only adds an exporter for a new endpoint.
    """
    global _provider
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": f"symbi-{service}"}))
        trace.set_tracer_provider(_provider)
    if otlp_endpoint and otlp_endpoint not in _exporting_to:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        _exporting_to.add(otlp_endpoint)
    return _provider


def flush_tracing(timeout_ms: int = 5000) -> None:
    """Export every finished span now (on shutdown; the provider itself lives as long as the process)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_trace(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current W3C trace context (``traceparent``) to NATS or HTTP headers."""
    propagate.inject(headers)
    return headers


def extract_trace(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by incoming headers (an empty context if none)."""
    return propagate.extract(dict(headers or {}))


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
    """
    token = otel_context.attach(extract_trace(headers))
    try:
        with trace.get_tracer("symbi").start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span
    finally:
        otel_context.detach(token)


# --- metrics shared by every service ---------------------------------------------------------------

COMMANDS = Counter("symbi_commands_total", "Commands handled", ["service", "action", "outcome"])
COMMAND_SECONDS = Histogram(
    "symbi_command_seconds",
    "Command handling latency",
    ["service", "action"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENTS_APPENDED = Counter("symbi_events_appended_total", "Events appended", ["service", "aggregate_type"])
PROJECTION_POSITION = Gauge("symbi_projection_position", "Last stream sequence applied", ["projection"])
PROJECTION_EVENTS = Counter("symbi_projection_events_total", "Events applied by projections", ["projection"])
REJECTED_EVENTS = Counter(
    "symbi_rejected_events_total", "Stored events that failed verification or decoding", ["consumer", "reason"]
)
