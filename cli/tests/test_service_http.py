"""The CLI speaks HTTPS to a deployment's services and trusts only the deployment's CA (symbi_cli.service_http).

A real TLS server stands in for a service: its certificate is issued by a deployment directory's CA (made by
``ensure_tls``) or by another CA, and it records the first byte of every connection, so a request sent in clear
(``G``, ``P`` …) instead of a TLS handshake (``0x16``) would show.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from symbi_cli.agent_cmd import lifecycle_url
from symbi_cli.console.app import ConsoleConfig, create_app
from symbi_cli.console.services import ServiceCallFailed, Services
from symbi_cli.console.services import service_urls as console_service_urls
from symbi_cli.deploy_tls import CA_CERT_FILE, CA_KEY_FILE, ensure_tls, issue, new_ca
from symbi_cli.main import app
from symbi_cli.run_services import service_urls as run_service_urls
from symbi_cli.service_http import CA_ENV, HttpTlsError, ca_file, verify
from symbi_cli.status_probes import local_snapshot
from symbi_cli.task_cmd import scheduler_url
from symbi_cli.tools_cmd import sandbox_url
from symbi_fixtures.pem_files import write_pem_pair
from typer.testing import CliRunner, Result

HELLO = Path(__file__).resolve().parents[2] / "examples" / "agents" / "hello.json"
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS record carrying a ClientHello
OUTPUT = b"hello over tls"
REFUSED = "CERTIFICATE_VERIFY_FAILED"

ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/healthz"): {"status": "ok", "uptime_s": 1.5},
    ("GET", "/readyz"): {"status": "ready", "checks": {"nats": True}},
    ("GET", "/v1/agents"): {"items": [{"id": "hello-1", "state": "Ready"}], "next_cursor": None},
    ("POST", "/v1/agents"): {"id": "hello-1", "name": "hello", "version": "1.0.0", "state": "Ready", "errors": []},
    ("GET", "/v1/tools"): {"tools": []},
    ("GET", "/v1/tasks/t-1/output"): {
        "data_base64": base64.b64encode(OUTPUT).decode(),
        "done": True,
        "next_offset": len(OUTPUT),
    },
}


class _Handler(BaseHTTPRequestHandler):
    """Answers like a service: the JSON of :data:`ANSWERS`, 404 for anything else."""

    server: ServiceStandIn

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        self.server.requests.append(f"{self.command} {path}")
        body = ANSWERS.get((self.command, path))
        data = json.dumps(body if body is not None else {"error": {"code": "not_found", "message": path}}).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads :attr:`ServiceStandIn.requests`."""


class ServiceStandIn(ThreadingHTTPServer):
    """A service's HTTP API on ``127.0.0.1:port``: over TLS with ``context``, in clear without one."""

    daemon_threads = True

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.first_bytes: list[bytes] = []
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        try:
            sock.settimeout(10)
            self.first_bytes.append(sock.recv(1, socket.MSG_PEEK))
            if self.context is None:
                return sock, address
            return self.context.wrap_socket(sock, server_side=True), address
        except OSError:  # the client refused the handshake (or never spoke): nothing was served
            sock.close()
            raise

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def _serving(server: ServiceStandIn) -> Iterator[ServiceStandIn]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _write_pem(directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*write_pem_pair(directory, key, cert))
    return context


def _server_context(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, directory: Path) -> ssl.SSLContext:
    """A server context with a certificate of ``ca`` naming loopback, as a deployment's service has."""
    key, cert = issue(ca_key, ca, "lifecycle", server_names=("127.0.0.1", "localhost"))
    return _write_pem(directory, key, cert)


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A deployment directory with its TLS material, as ``symbi deploy init`` writes it."""
    directory = tmp_path / "deployment"
    ensure_tls(directory)
    return directory


def _deployment_context(deployment: Path, tmp_path: Path) -> ssl.SSLContext:
    ca_key = serialization.load_pem_private_key((deployment / CA_KEY_FILE).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((deployment / CA_CERT_FILE).read_bytes())
    return _server_context(ca_key, ca, tmp_path / "ours")


def _foreign_context(tmp_path: Path) -> ssl.SSLContext:
    ca_key, ca = new_ca()
    return _server_context(ca_key, ca, tmp_path / "theirs")


def invoke(*args: str, **env: str | None) -> Result:
    runner = CliRunner(env={"SYMBI_OPERATOR_TOKEN": "t0ken", "SYMBI_HOME": None, CA_ENV: None, "COLUMNS": "200", **env})
    return runner.invoke(app, list(args))


def test_a_deployment_home_is_spoken_to_over_https_with_its_ca(
    deployment: Path, tmp_path: Path, free_base_port: int
) -> None:
    server = ServiceStandIn(free_base_port + 1, _deployment_context(deployment, tmp_path))  # the lifecycle port
    with _serving(server) as srv:
        status = invoke("status", "--home", str(deployment), "--base-port", str(free_base_port), "--json")
        assert status.exit_code == 0, status.output
        report = json.loads(status.stdout)
        lifecycle = {c["name"]: c for c in report["components"]}["lifecycle"]
        assert lifecycle["url"] == srv.url
        assert lifecycle["status"] == "ok"
        assert report["agents"]["by_state"] == {"Ready": 1}

        home = ["--home", str(deployment), "--url", srv.url]
        registered = invoke("agent", "register", str(HELLO), *home)
        assert registered.exit_code == 0, registered.output
        assert registered.stdout.strip() == "agent hello-1 (hello 1.0.0): Ready"
        tools = invoke("tools", "list", *home, "--json")
        assert tools.exit_code == 0, tools.output
        assert json.loads(tools.stdout) == {"tools": []}
        logs = invoke("task", "logs", "t-1", "--stream", "stdout", *home)
        assert logs.exit_code == 0, logs.output
        assert logs.stdout_bytes == OUTPUT

        assert {"GET /readyz", "GET /v1/agents", "POST /v1/agents", "GET /v1/tools"} <= set(srv.requests)
        assert srv.first_bytes
        assert set(srv.first_bytes) == {TLS_HANDSHAKE}


def test_a_certificate_of_another_ca_is_refused_and_nothing_goes_in_clear(
    deployment: Path, tmp_path: Path, free_base_port: int
) -> None:
    server = ServiceStandIn(free_base_port + 1, _foreign_context(tmp_path))
    with _serving(server) as srv:
        status = invoke("status", "--home", str(deployment), "--base-port", str(free_base_port), "--json")
        assert status.exit_code == 1, status.output
        report = json.loads(status.stdout)
        assert report["status"] == "down"
        lifecycle = {c["name"]: c for c in report["components"]}["lifecycle"]
        assert lifecycle["url"] == srv.url
        assert REFUSED in lifecycle["detail"]

        home = ["--home", str(deployment), "--url", srv.url]
        registered = invoke("agent", "register", str(HELLO), *home)
        assert registered.exit_code == 2
        assert f"cannot reach the lifecycle service at {srv.url}" in registered.output
        assert REFUSED in registered.output
        tools = invoke("tools", "list", *home)
        assert tools.exit_code == 2
        assert REFUSED in tools.output
        logs = invoke("task", "logs", "t-1", *home)
        assert logs.exit_code == 2
        assert "cannot reach the scheduler" in logs.output
        assert REFUSED in logs.output

        assert srv.requests == []
        assert srv.first_bytes
        assert set(srv.first_bytes) == {TLS_HANDSHAKE}


def test_a_service_answering_in_clear_is_not_spoken_to_in_clear(deployment: Path, free_base_port: int) -> None:
    server = ServiceStandIn(free_base_port + 1, None)
    with _serving(server) as srv:
        status = invoke("status", "--home", str(deployment), "--base-port", str(free_base_port), "--json")
        assert status.exit_code == 1, status.output
        assert json.loads(status.stdout)["status"] == "down"
        assert srv.requests == []
        assert srv.first_bytes
        assert set(srv.first_bytes) == {TLS_HANDSHAKE}


async def test_the_console_trusts_the_deployment_ca_only(deployment: Path, tmp_path: Path) -> None:
    with (
        _serving(ServiceStandIn(0, _deployment_context(deployment, tmp_path))) as ours,
        _serving(ServiceStandIn(0, _foreign_context(tmp_path))) as theirs,
    ):
        urls = {"lifecycle": ours.url, "audit": theirs.url}
        config = ConsoleConfig(
            urls=urls, keys_dir=tmp_path / "keys", state_dir=tmp_path / "console", verify=verify(deployment)
        )
        app = create_app(config)
        async with app.router.lifespan_context(app):
            services = Services(urls, "t0ken", app.state.http)
            assert await services.get("lifecycle", "/v1/agents") == ANSWERS[("GET", "/v1/agents")]
            with pytest.raises(ServiceCallFailed, match=REFUSED) as refused:
                await services.get("audit", "/v1/agents")
            assert refused.value.status == 0
        assert ours.requests == ["GET /v1/agents"]
        assert theirs.requests == []


def test_a_missing_or_unusable_http_ca_is_a_typed_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(HttpTlsError, match=re.escape(f"{CA_ENV}={missing}: no such file")):
        ca_file(tmp_path, {CA_ENV: str(missing)})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(HttpTlsError, match=r"cannot use .*garbage\.pem as the services' CA"):
        verify(tmp_path, {CA_ENV: str(garbage)})

    home = ["--home", str(tmp_path)]
    expected = f"{CA_ENV}={missing}: no such file"
    registered = invoke("agent", "register", str(HELLO), *home, **{CA_ENV: str(missing)})
    assert registered.exit_code == 2
    assert expected in registered.output
    tools = invoke("tools", "list", *home, **{CA_ENV: str(missing)})
    assert tools.exit_code == 2
    assert expected in tools.output
    logs = invoke("task", "logs", "t-1", *home, **{CA_ENV: str(missing)})
    assert logs.exit_code == 2
    assert expected in logs.output
    status = invoke("status", *home, **{CA_ENV: str(missing)})
    assert status.exit_code == 1
    assert expected in status.output
    console = invoke("console", *home, **{CA_ENV: str(missing)})
    assert console.exit_code == 1
    assert expected in console.output


def test_the_scheme_follows_the_home(deployment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (CA_ENV, "SYMBI_HOME", "SYMBI_LIFECYCLE_URL", "SYMBI_SANDBOX_URL"):
        monkeypatch.delenv(variable, raising=False)
    plain = tmp_path / "plain"
    plain.mkdir()
    for home, scheme in ((plain, "http"), (deployment, "https")):
        assert lifecycle_url(None, home) == f"{scheme}://127.0.0.1:8081"
        assert scheduler_url(None, home) == f"{scheme}://127.0.0.1:8083"
        assert sandbox_url(None, home) == f"{scheme}://127.0.0.1:8085"
        urls = console_service_urls(home, 9000)
        assert urls["lifecycle"] == f"{scheme}://127.0.0.1:9001"
        assert urls["context"] == f"{scheme}://127.0.0.1:9006"
        assert run_service_urls(home, 9000).audit == f"{scheme}://127.0.0.1:9004"
        probes = local_snapshot(home, 9000, "127.0.0.1").services
        assert {p.url.split("://")[0] for p in probes.values()} == {scheme}
    assert verify(plain) is True
    assert isinstance(verify(deployment), ssl.SSLContext)
    # An explicit URL is used as given, whatever the home.
    assert lifecycle_url("http://elsewhere:1/", deployment) == "http://elsewhere:1"
    assert scheduler_url("https://sched:9/", plain) == "https://sched:9"
    # $SYMBI_HTTP_CA switches a home without a CA of its own to HTTPS, trusting that CA.
    monkeypatch.setenv(CA_ENV, str(deployment / CA_CERT_FILE))
    assert lifecycle_url(None, plain) == "https://127.0.0.1:8081"
    assert isinstance(verify(plain), ssl.SSLContext)
