"""The FastAPI app of a service: ``/healthz``, ``/readyz``, ``/metrics``, typed error responses, operator
authentication on every other route, and the lifespan that starts and stops its :class:`ServiceRuntime`.

:func:`run_service` is a service's ``__main__``; :func:`serve` runs the app under uvicorn. On shutdown
(SIGTERM/Ctrl-C) the lifespan stops the runtime (see :meth:`ServiceRuntime.stop`).
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from uvicorn.config import STARTUP_FAILURE

from symbi_common import openapi
from symbi_common.body_limit import BodyLimit
from symbi_common.errors import ConfigError, SymbiError, to_wire
from symbi_common.operator_auth import (
    OperatorAuth,
    OperatorGuard,
    authorize_request,
    bearer_token,
    document_security,
)
from symbi_common.quiet_server import QuietServer
from symbi_common.service import ServiceRuntime
from symbi_common.settings import Settings, load_settings
from symbi_common.settings_sections import ServiceSettings
from symbi_common.telemetry import request_trace, tracing_enabled

log = structlog.get_logger(__name__)

#: Routes whose requests start no trace (probes and scrapes).
_UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    """No server span for probes and scrapes, nor for any request while spans go nowhere (:class:`TraceContext`)."""
    return scope.get("path") in _UNTRACED_PATHS or not tracing_enabled()


class TraceContext:
    """The trace a request's work belongs to while no span is exported (FastAPI's server span is then skipped:
    making one costs about 0.1 ms of CPU per request): the caller's ``traceparent``, else a new trace id, so
    the events a request appends still carry a trace onward. While spans are exported, FastAPI's span is it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or tracing_enabled() or scope.get("path") in _UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(request_trace(scope["headers"]))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)


def create_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
    on_start: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
) -> FastAPI:
    """The service's HTTP app; its lifespan starts and stops ``runtime``.

    Every route but ``/healthz``, ``/readyz`` and ``/metrics`` needs an operator token and an allowing
    policy decision (:mod:`symbi_common.operator_auth`).
    """
    guard = OperatorGuard(runtime.name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            if on_start is not None:
                await on_start(runtime)
            await guard.start(runtime)
            await runtime.commands.start()
            yield
        finally:
            await runtime.stop()

    # FastAPI's own OpenTelemetry instrumentation makes one server span per request, continuing an
    # incoming W3C ``traceparent`` (route, method and status as attributes). Only traces: metrics are
    # Prometheus's here, and per-operation spans (dependencies, serialization) would only add cost.
    telemetry: TelemetryConfig = {
        "tracing": True,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "exclude": _untraced,
    }
    app = FastAPI(title=title, lifespan=lifespan, telemetry=telemetry, dependencies=[Depends(authorize_request)])
    app.state.runtime = runtime
    app.add_middleware(TraceContext)
    app.add_middleware(BodyLimit, limit=runtime.settings.events.max_command_bytes)
    app.add_middleware(OperatorAuth, guard=guard)  # outermost: nothing is read for an unauthorized caller
    app.state.operator_guard = guard

    @app.exception_handler(SymbiError)
    async def _symbi_error(request: Request, exc: SymbiError) -> JSONResponse:
        return JSONResponse({"error": to_wire(exc)}, status_code=exc.http_status)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": runtime.name, "uptime_s": round(time.time() - runtime.started_at, 1)}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        report = await runtime.health()
        report["service"] = runtime.name
        # The recent errors name tasks and agents: shown to an operator's token only (the probe itself is open).
        if _operator_token(guard, request):
            report["recent_errors"] = runtime.recent_errors[-5:]
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        await runtime.refresh_metrics()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    openapi.install(app)
    document_security(app)
    return app


def run_service(
    prog: str,
    description: str,
    build_app: Callable[[Settings], FastAPI],
    argv: Sequence[str] | None = None,
    *,
    needs_database: bool = False,
) -> None:
    """Every service's ``main()``: read the settings (``--config`` or ``SYMBI_CONFIG_PATH`` plus ``SYMBI_*``),
    build the app and serve until SIGTERM/SIGINT. A bad setting ends the process with exit code 2 and a
    message naming it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: $SYMBI_CONFIG_PATH)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if needs_database and not settings.database.url:
            raise ConfigError("set SYMBI_DATABASE_URL or [database] url", setting="database.url")
        https = https_files(settings.service)
        app = build_app(settings)
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(app, settings, https)


def https_files(service: ServiceSettings) -> tuple[str, str] | None:
    """``(certificate, key)`` to serve HTTPS with, from ``[service] tls_cert`` / ``tls_key``; ``None`` when neither is
    set (plain HTTP).

    Refused with a :class:`ConfigError` naming the setting: one of the two without the other, or files that do not
    load as a certificate and its private key; a service asked to serve HTTPS never starts in clear instead.
    """
    cert, key = service.tls_cert, service.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "service.tls_key" if cert else "service.tls_cert"
        raise ConfigError("HTTPS needs both a certificate and its key; set both or neither", setting=missing)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot serve HTTPS with {cert} and {key}: {err}", setting="service.tls_cert") from None
    return cert, key


def serve(app: FastAPI, settings: Settings, https: tuple[str, str] | None = None) -> None:
    """Run the app under uvicorn until SIGTERM/SIGINT; the lifespan shuts the runtime down cleanly. ``https``:
    :func:`https_files` (HTTPS), or nothing (plain HTTP).

    On uvloop, with httptools parsing HTTP: each service spends most of its CPU in the event loop and, for the
    APIs, in parsing requests; these two cut a command's cost in the lifecycle service by about a sixth."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        host=settings.service.http_host,
        port=settings.service.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        ssl_certfile=https[0] if https else None,
        ssl_keyfile=https[1] if https else None,
    )
    server = QuietServer(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)  # as uvicorn.run ends when the app did not start


def _operator_token(guard: OperatorGuard, request: Request) -> bool:
    """Whether ``request`` carries a valid operator token (on a path that does not require one)."""
    try:
        guard.authenticate(bearer_token(request.scope.get("headers") or []))
    except SymbiError:
        return False
    return True
