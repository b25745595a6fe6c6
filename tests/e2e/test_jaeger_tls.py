"""A deployment's Jaeger takes spans over mutual TLS only: the real Jaeger (v1.75.0) with the deployment's own
receiver configuration (``deploy/jaeger/jaeger.yaml``, listeners moved to free loopback ports and ``/tls`` to the
jaeger party's directory of a fresh ``symbi deploy init``-made TLS tree).

A service exporting exactly as the compose file and the Kubernetes manifests configure it (``OTEL_EXPORTER_OTLP_*``
naming its own ``/tls`` files) gets its spans stored; no client certificate, a certificate of another CA, or
plain HTTP gets nothing in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import yaml
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from symbi_cli.deploy_tls import JAEGER_PARTY, ensure_tls, issue, new_ca, party_files
from symbi_common.telemetry import otlp_span_exporter
from symbi_fixtures.pem_files import write_pem_pair
from symbi_fixtures.runtimes import take_free_ports

from .conftest import running_jaeger

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
#: The OTLP settings every service container gets (the compose file's service environment).
SERVICE_ENV = {k: v for k, v in COMPOSE["x-service"]["environment"].items() if k.startswith("OTEL_EXPORTER_OTLP_")}


def _deployment_config(tmp_path: Path, tls: Path, ports: tuple[int, int, int, int]) -> Path:
    health, query, query_grpc, otlp = ports
    config = yaml.safe_load((REPO / "deploy" / "jaeger" / "jaeger.yaml").read_text())
    config["extensions"]["healthcheckv2"]["http"]["endpoint"] = f"127.0.0.1:{health}"
    config["extensions"]["jaeger_query"]["http"]["endpoint"] = f"127.0.0.1:{query}"
    config["extensions"]["jaeger_query"]["grpc"]["endpoint"] = f"127.0.0.1:{query_grpc}"
    receiver = config["receivers"]["otlp"]["protocols"]["http"]
    receiver["endpoint"] = f"127.0.0.1:{otlp}"
    receiver["tls"] = {key: value.replace("/tls", str(tls)) for key, value in receiver["tls"].items()}
    path = tmp_path / "jaeger.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _export(service: str, endpoint: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> SpanExportResult:
    """One span of ``service`` sent by the services' own exporter, configured by ``env`` alone (as in a container)."""
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # requests would let this override the CA the settings name; the services' exporter must not.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # a refused export gives up after 2 s, not 10
    captured = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(captured))
    with provider.get_tracer("test").start_as_current_span("probe"):
        pass
    exporter = otlp_span_exporter(endpoint)
    try:
        return exporter.export(captured.get_finished_spans())
    finally:
        exporter.shutdown()


def _services(query_url: str) -> set[str]:
    answer: Any = httpx.get(f"{query_url}/api/services", timeout=5).json()
    return set(answer.get("data") or [])


def test_spans_reach_the_deployments_jaeger_over_mutual_tls_only(
    jaeger_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "deploy"
    ensure_tls(directory)
    ports = take_free_ports(4)
    config = _deployment_config(tmp_path, party_files(directory, JAEGER_PARTY).directory, ports)
    # The service's own /tls, where the compose file's paths point.
    own = party_files(directory, "lifecycle")
    env = {k: v.replace("/tls", str(own.directory)) for k, v in SERVICE_ENV.items()}
    assert set(env) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    }
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://jaeger:4318"
    https = f"https://localhost:{ports[3]}"  # a name Jaeger's certificate carries, as `jaeger` is in the stack
    other_key, other_ca = new_ca()
    stranger_cert, stranger_key = write_pem_pair(tmp_path / "stranger", *issue(other_key, other_ca, "lifecycle"))
    no_certificate = {k: v for k, v in env.items() if "CLIENT" not in k}
    another_ca = {
        **env,
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(stranger_cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(stranger_key),
    }
    with running_jaeger(jaeger_binary, config, ports[0]):
        query = f"http://127.0.0.1:{ports[1]}"
        assert _export("no-certificate", https, no_certificate, monkeypatch) == SpanExportResult.FAILURE
        assert _export("another-ca", https, another_ca, monkeypatch) == SpanExportResult.FAILURE
        assert _export("in-clear", f"http://localhost:{ports[3]}", {}, monkeypatch) == SpanExportResult.FAILURE
        assert _export("lifecycle", https, env, monkeypatch) == SpanExportResult.SUCCESS
        deadline = time.monotonic() + 15
        while "lifecycle" not in _services(query):
            assert time.monotonic() < deadline, f"the span never reached Jaeger's store: {_services(query)}"
            time.sleep(0.2)
        assert _services(query) == {"lifecycle"}
