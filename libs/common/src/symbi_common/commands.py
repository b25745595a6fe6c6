"""Commands over NATS request/reply: ``cmd.<service>.<action>`` with typed results and typed errors.

Requests and replies are JSON (readable with ordinary NATS tools). A reply is either
``{"ok": true, "result": …}`` or ``{"ok": false, "error": {"code", "message", "details"}}``; the
client turns the latter back into the matching :class:`SymbiError` subclass. Every request is
served in a queue group, so several replicas of a service share the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace

from symbi_common.bounds import check_ints, check_json_depth
from symbi_common.errors import (
    BadRequest,
    InfrastructureError,
    PayloadTooLarge,
    SymbiError,
    Timeout,
    from_wire,
    to_wire,
)
from symbi_common.server_sync import synced
from symbi_common.telemetry import COMMAND_SECONDS, COMMANDS, continue_trace, inject_trace

T = TypeVar("T")
R = TypeVar("R")
log = structlog.get_logger(__name__)
_json = msgspec.json.Encoder()
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_NAMED_RE = re.compile(r"field `([^`]+)`")


def _field_of(error: str) -> str | None:
    """The request field a msgspec error is about (``config.name``), if it names one."""
    path = _PATH_RE.search(error)
    named = _NAMED_RE.search(error)
    parts = [p for p in (path.group(1) if path else "", named.group(1) if named else "") if p]
    return ".".join(parts) or None


@dataclass(frozen=True, slots=True)
class CommandMeta:
    """Who asked, for tracing and causation: the request's headers."""

    headers: dict[str, str]

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("Symbi-Correlation-Id")


@dataclass(frozen=True, slots=True)
class _Route(Generic[T]):
    request_type: type[T]
    handler: Callable[[T, CommandMeta], Awaitable[Any]]


class CommandServer:
    """Serves ``cmd.<service>.<action>`` requests with registered handlers."""

    def __init__(self, nc: NatsClient, service: str, *, max_request_bytes: int = 256 * 1024) -> None:
        self.nc = nc
        self.service = service
        self.max_request_bytes = max_request_bytes
        self._routes: dict[str, _Route[Any]] = {}
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, action: str, request_type: type[T], handler: Callable[[T, CommandMeta], Awaitable[Any]]) -> None:
        self._routes[action] = _Route(request_type, handler)

    @property
    def actions(self) -> dict[str, type[Any]]:
        """Each served action and the request type its body is decoded into."""
        return {action: route.request_type for action, route in self._routes.items()}

    def local(self, action: str) -> Callable[[Any], Awaitable[Any]]:
        """``action`` called in this process, decoded and checked as a request off the wire would be.

        For a service that is itself the recipient of one of its own commands (the policy service's
        decision log): the call needs no NATS round trip and still works while the service stops, after
        its subscription has ended. A route not registered (yet) is an infrastructure error, so a caller
        that retries on those (the decision log) tries again rather than dropping its request.
        """

        async def call(request: Any) -> Any:
            if action not in self._routes:
                raise InfrastructureError(f"{self.service}.{action} is not served by this process yet")
            return await self._dispatch(action, _json.encode(request), CommandMeta({}))

        return call

    async def start(self) -> None:
        """Serve the commands; on return the server delivers them here (a caller on another connection gets
        an answer, not "no responders")."""
        self._sub = await self.nc.subscribe(f"cmd.{self.service}.*", queue=self.service, cb=self._on_msg)
        await synced(self.nc)

    async def stop(self) -> None:
        """Stop taking commands (on return the server sends none here) and finish the ones being handled."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
            if self.nc.is_connected:  # a connection that is down takes no command either: no round trip to wait
                with contextlib.suppress(nats.errors.Error):
                    await synced(self.nc)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_msg(self, msg: Msg) -> None:
        # Handle each request in its own task so a slow command does not hold up the others.
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        action = msg.subject.rsplit(".", 1)[-1]
        headers = dict(msg.headers or {})
        started = time.perf_counter()
        outcome = "ok"
        try:
            # A span while spans are exported; else only the caller's trace, carried on to what is appended.
            with continue_trace(
                f"cmd.{self.service}.{action}",
                headers,
                kind=trace.SpanKind.SERVER,
                attributes={"messaging.system": "nats", "messaging.destination.name": msg.subject},
            ) as span:
                structlog.contextvars.bind_contextvars(command=action)
                try:
                    result = await self._dispatch(action, msg.data, CommandMeta(headers))
                    body = _json.encode({"ok": True, "result": result})
                except SymbiError as err:
                    outcome = err.code
                    span.set_attribute("symbi.error", err.code)
                    body = _json.encode({"ok": False, "error": to_wire(err)})
                except Exception as exc:
                    outcome = "internal"
                    log.exception("command failed", action=action)
                    internal = SymbiError(f"internal error in {self.service}.{action}: {type(exc).__name__}")
                    body = _json.encode({"ok": False, "error": to_wire(internal)})
                finally:
                    structlog.contextvars.unbind_contextvars("command")
            if msg.reply:
                await msg.respond(body)
        finally:
            COMMANDS.labels(self.service, action, outcome).inc()
            COMMAND_SECONDS.labels(self.service, action).observe(time.perf_counter() - started)

    async def _dispatch(self, action: str, data: bytes, meta: CommandMeta) -> Any:
        route = self._routes.get(action)
        if route is None:
            raise BadRequest(f"unknown command {self.service}.{action}; known: {', '.join(sorted(self._routes))}")
        if len(data) > self.max_request_bytes:
            raise PayloadTooLarge(size=len(data), limit=self.max_request_bytes, what="command")
        try:
            request = msgspec.json.decode(check_json_depth(data) or b"{}", type=route.request_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            field = _field_of(str(exc))
            raise BadRequest(f"{self.service}.{action}: {exc}", field=field) from exc
        check_ints(request)
        return await route.handler(request, meta)


class CommandClient:
    """Sends commands and returns typed results, raising the typed error a service replied with."""

    def __init__(self, nc: NatsClient, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout

    async def call(
        self,
        service: str,
        action: str,
        request: Any,
        result_type: type[R],
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> R:
        hdrs: dict[str, str] = dict(headers or {})
        inject_trace(hdrs)
        subject = f"cmd.{service}.{action}"
        try:
            msg = await self.nc.request(subject, _json.encode(request), timeout=timeout or self.timeout, headers=hdrs)
        except nats.errors.NoRespondersError as exc:
            raise InfrastructureError(f"no {service} service is answering {subject}; is it running?") from exc
        except nats.errors.TimeoutError as exc:
            raise Timeout(f"{subject} did not answer within {timeout or self.timeout} s") from exc
        reply = msgspec.json.decode(msg.data)
        if not reply.get("ok"):
            raise from_wire(reply.get("error") or {})
        return msgspec.convert(reply.get("result"), result_type)
