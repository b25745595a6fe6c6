"""Fixtures of the end-to-end tests: a real OTLP/HTTP trace receiver, runtimes that export to it, and the
pinned Go tools (natscli, Jaeger) as built by ``deploy/host/tools.sh``.

``otlp_receiver`` is an HTTP server in the test process that accepts what the OpenTelemetry OTLP/HTTP
exporter of every Symbi process sends (``POST /v1/traces``, ``application/x-protobuf``), decodes each
``ExportTraceServiceRequest`` and keeps the spans. Point the processes at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint`` (and ``OTEL_BSP_SCHEDULE_DELAY=200`` so their
batches go out quickly), then read ``otlp_receiver.spans()`` or ``await otlp_receiver.wait_for(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from symbi_cli.runtime_options import ALL_SERVICES, RuntimeOptions
from symbi_fixtures.runtimes import take_free_ports

#: Every process that works on a run: the ``symbi`` command (the root) and the six services.
TRACED = ("symbi-cli", *(f"symbi-{s}" for s in ALL_SERVICES))


@dataclass(frozen=True)
class SpanRecord:
    """One received span; ids as lowercase hex, ``parent_span_id`` empty for a root span."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def decode_export(body: bytes) -> list[SpanRecord]:
    """The spans of one OTLP ``ExportTraceServiceRequest`` (protobuf)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        service = str(resource.get("service.name", ""))
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        service=service,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                    )
                )
    return out


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (a thread of the test process)."""

    def __init__(self) -> None:
        self._spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        #: Requests that were not a decodable ``POST /v1/traces`` (the test should see none).
        self.refused: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding", "") == "gzip":
                    body = gzip.decompress(body)
                content_type = self.headers.get("content-type", "")
                if self.path != "/v1/traces" or not content_type.startswith("application/x-protobuf"):
                    receiver.refused.append(f"{self.path} {content_type}")
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                try:
                    spans = decode_export(body)
                except Exception as exc:  # a body that is not an ExportTraceServiceRequest
                    receiver.refused.append(f"undecodable body: {exc!r}")
                    self.send_error(400)
                    return
                with receiver._lock:
                    receiver._spans.extend(spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporters add ``/v1/traces``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def spans(self) -> list[SpanRecord]:
        """Every span received so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    async def wait_for(self, predicate: Callable[[list[SpanRecord]], bool], timeout: float = 20.0) -> list[SpanRecord]:
        """Poll until ``predicate(spans)`` holds and return the spans; :class:`TimeoutError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(f"the received spans ({len(spans)}) did not satisfy the condition in {timeout} s")
            await asyncio.sleep(0.1)

    def trace_problems(self, trace_id: str) -> list[str]:
        """Why the spans of ``trace_id`` are not (yet) one tree rooted in the CLI that covers every process of a
        run — the ``symbi`` command and the six services; empty when they are."""
        mine = [s for s in self.spans() if s.trace_id == trace_id]
        if not mine:
            return [f"no span of trace {trace_id}"]
        problems = []
        ids = {s.span_id for s in mine}
        roots = [f"{s.service}:{s.name}" for s in mine if not s.parent_span_id]
        if len(roots) != 1 or not roots[0].startswith("symbi-cli:"):
            problems.append(f"not one root span from symbi-cli: {roots}")
        dangling = sorted({f"{s.service}:{s.name}" for s in mine if s.parent_span_id and s.parent_span_id not in ids})
        if dangling:
            problems.append(f"spans whose parent never arrived: {dangling}")
        missing = sorted(set(TRACED) - {s.service for s in mine})
        if missing:
            problems.append(f"no span from {missing}")
        return problems

    async def assert_one_trace(self, trace_id: str, timeout: float = 20.0) -> None:
        """The run's spans form one tree rooted in the CLI with spans from every process (spans arrive in batches)."""
        assert isinstance(trace_id, str), trace_id
        assert len(trace_id) == 32, trace_id
        with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
            await self.wait_for(lambda _: not self.trace_problems(trace_id), timeout=timeout)
        problems = self.trace_problems(trace_id)
        assert not problems, f"trace {trace_id}: {'; '.join(problems)}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver for this test, stopped afterwards."""
    receiver = OtlpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def traced_runtime(runtime_options: RuntimeOptions, otlp_receiver: OtlpReceiver) -> RuntimeOptions:
    """``runtime_options`` whose every process (and every ``symbi`` command run with ``options.env``) exports
    its spans to ``otlp_receiver`` within 0.2 s."""
    env = dict(
        runtime_options.env or {},
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    return dataclasses.replace(runtime_options, env=env)


# --- the pinned Go tools ----------------------------------------------------------------------------

TOOLS_SH = Path(__file__).resolve().parents[2] / "deploy" / "host" / "tools.sh"


def go_tool(name: str) -> Path:
    """The cached binary of a pinned Go tool (``natscli``, ``jaeger``); built by ``deploy/host/tools.sh`` when
    it is not in the cache yet (once: minutes for Jaeger). A tool that cannot be built fails the test."""
    found = subprocess.run([str(TOOLS_SH), "--print", name], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        print(f"{name} is not in the tool cache: building it with deploy/host/tools.sh {name} (once, minutes)")
        built = subprocess.run([str(TOOLS_SH), name], capture_output=True, text=True, check=False, timeout=3600)
        if built.returncode != 0:
            pytest.fail(
                f"{name} could not be built by deploy/host/tools.sh {name} (it needs Go 1.26 and the Go module "
                f"proxy); its output:\n{(built.stdout + built.stderr)[-3000:]}"
            )
        found = subprocess.run([str(TOOLS_SH), "--print", name], capture_output=True, text=True, check=True)
    binary = Path(found.stdout.strip())
    assert binary.is_file(), binary
    return binary


@pytest.fixture(scope="session")
def nats_cli() -> Path:
    """The NATS CLI, natscli v0.5.0 (``nats``)."""
    return go_tool("natscli")


@pytest.fixture(scope="session")
def jaeger_binary() -> Path:
    """Jaeger v1.75.0 all-in-one (``jaeger``)."""
    return go_tool("jaeger")


#: Jaeger v2 (``cmd/jaeger``) as a test needs it: OTLP/HTTP in, the in-memory store, the query API; every
#: listener on loopback at a port of the test's choosing (the all-in-one defaults are fixed ports).
JAEGER_CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass(frozen=True)
class Jaeger:
    """A running Jaeger: where to send OTLP/HTTP and where its query API answers."""

    otlp_endpoint: str
    query_url: str
    #: The ``jaeger`` process (the fixture stops it after the test, unless the test did).
    process: subprocess.Popen[bytes]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(json.load(answer).get("healthy"))
    except (OSError, ValueError):
        return False


@pytest.fixture
def jaeger(jaeger_binary: Path, tmp_path: Path) -> Iterator[Jaeger]:
    """A real Jaeger for this test (in-memory store), healthy before the test starts; stopped afterwards."""
    health, query, query_grpc, otlp = take_free_ports(4)
    config = tmp_path / "jaeger.yaml"
    config.write_text(JAEGER_CONFIG.format(health=health, query=query, query_grpc=query_grpc, otlp=otlp))
    with running_jaeger(jaeger_binary, config, health) as proc:
        yield Jaeger(otlp_endpoint=f"http://127.0.0.1:{otlp}", query_url=f"http://127.0.0.1:{query}", process=proc)


@contextlib.contextmanager
def running_jaeger(binary: Path, config: Path, health: int) -> Iterator[subprocess.Popen[bytes]]:
    """``jaeger --config CONFIG``, healthy (its health check on port ``health``) before this yields; stopped after."""
    log = config.with_suffix(".log")
    # Jaeger traces its own query API through the OpenTelemetry SDK's defaults (OTLP/gRPC to localhost:4317,
    # where nothing listens): after one query its shutdown waits 10 s for that export to time out. It is not
    # asked to trace itself, so it stops at once on SIGTERM.
    env = dict(os.environ, OTEL_TRACES_SAMPLER="always_off")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=config.parent, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jaeger exited with status {proc.returncode}: {log.read_text()[-3000:]}")
            if _healthy(f"http://127.0.0.1:{health}/status"):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"jaeger was not healthy within 60 s: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
