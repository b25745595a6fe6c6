"""Tracing across NATS, exported over OTLP/HTTP to a real receiver started by the test.

A separate process (as in production) configures tracing with the receiver's endpoint, sends a
command over a real nats-server to a command server, and exits; the receiver must get both spans
in one trace, the server span a child of the client span.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from structlog.testing import capture_logs
from symbi_common.telemetry import configure_logging

SCRIPT = r"""
import asyncio, sys
import msgspec, nats
from opentelemetry import trace
from symbi_common.commands import CommandClient, CommandServer
from symbi_common.telemetry import configure_tracing, flush_tracing

class Ping(msgspec.Struct):
    n: int

async def main(url: str, endpoint: str) -> None:
    configure_tracing("test", endpoint)
    nc = await nats.connect(url)
    server = CommandServer(nc, "probe")
    async def ping(req: Ping, meta):
        return {"n": req.n + 1}
    server.register("ping", Ping, ping)
    await server.start()
    with trace.get_tracer("caller").start_as_current_span("caller-span"):
        out = await CommandClient(nc).call("probe", "ping", {"n": 1}, dict)
    assert out == {"n": 2}, out
    await server.stop()
    await nc.drain()
    flush_tracing()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        type(self).bodies.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    _Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_one_trace_across_nats_exported_over_otlp(
    nats_url: str, otlp_receiver: tuple[str, list[tuple[str, bytes]]]
) -> None:
    endpoint, bodies = otlp_receiver
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, nats_url, endpoint], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    spans = []
    for path, body in bodies:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
            assert service == "symbi-test"
            spans.extend(span for ss in rs.scope_spans for span in ss.spans)
    by_name = {s.name: s for s in spans}
    caller, handler = by_name["caller-span"], by_name["cmd.probe.ping"]
    assert handler.trace_id == caller.trace_id
    assert handler.parent_span_id == caller.span_id


def test_logs_are_structured_and_carry_the_service() -> None:
    configure_logging("lifecycle", "info", "json")
    with capture_logs() as logs:
        structlog.get_logger("x").info("hello", agent_id="a1")
    assert logs == [{"event": "hello", "agent_id": "a1", "log_level": "info"}]
    assert structlog.contextvars.get_contextvars()["service"] == "lifecycle"
