"""A service serves its HTTP API over HTTPS when given a certificate and its key (``[service] tls_cert`` /
``tls_key``, ``SYMBI_HTTP_TLS_CERT`` / ``SYMBI_HTTP_TLS_KEY``), and then only over HTTPS; one of the two without
the other, or files that are not a certificate and its key, stop the start with the setting named (exit 2)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from symbi_common.errors import ConfigError
from symbi_common.service_app import https_files
from symbi_common.settings_sections import ServiceSettings
from symbi_fixtures.model_upstream import make_ca_and_server_cert
from symbi_fixtures.runtimes import take_free_port

APP = textwrap.dedent(
    """
    from fastapi import FastAPI
    from symbi_common.service_app import run_service

    def build(settings):
        app = FastAPI()

        @app.get("/ping")
        def ping() -> str:
            return "pong"

        return app

    run_service("svc", "a service", build)
    """
)


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], int]:
    script = tmp_path / "svc.py"
    script.write_text(APP)
    port = take_free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    environ.update(SYMBI_HTTP_PORT=str(port), **env)
    proc = subprocess.Popen([sys.executable, str(script)], env=environ, stderr=subprocess.PIPE, text=True)
    return proc, port


def _get(url: str, verify: ssl.SSLContext | bool) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url, verify=verify, timeout=2)
        except httpx.ConnectError as err:
            if "CERTIFICATE_VERIFY_FAILED" in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_given_a_certificate_the_api_answers_over_https_only(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    other_ca, _, _ = make_ca_and_server_cert(tmp_path / "other")
    proc, port = _run(tmp_path, SYMBI_HTTP_TLS_CERT=str(cert), SYMBI_HTTP_TLS_KEY=str(key))
    try:
        answer = _get(f"https://127.0.0.1:{port}/ping", ssl.create_default_context(cafile=str(ca)))
        assert (answer.status_code, answer.json()) == (200, "pong")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(
                f"https://127.0.0.1:{port}/ping", verify=ssl.create_default_context(cafile=str(other_ca)), timeout=5
            )
        with pytest.raises(httpx.RemoteProtocolError):  # a clear request gets no answer, only a closed connection
            httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def test_without_settings_the_api_stays_plain_http(tmp_path: Path) -> None:
    proc, port = _run(tmp_path)
    try:
        assert _get(f"http://127.0.0.1:{port}/ping", True).json() == "pong"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


@pytest.mark.parametrize(
    ("give", "message"),
    [
        ({"SYMBI_HTTP_TLS_CERT": "cert"}, "setting service.tls_key: HTTPS needs both a certificate and its key"),
        ({"SYMBI_HTTP_TLS_KEY": "key"}, "setting service.tls_cert: HTTPS needs both a certificate and its key"),
        (
            {"SYMBI_HTTP_TLS_CERT": "cert", "SYMBI_HTTP_TLS_KEY": "other-key"},
            "setting service.tls_cert: cannot serve HTTPS",
        ),
        (
            {"SYMBI_HTTP_TLS_CERT": "missing", "SYMBI_HTTP_TLS_KEY": "key"},
            "setting service.tls_cert: cannot serve HTTPS",
        ),
    ],
)
def test_a_half_or_broken_tls_setting_stops_the_start(tmp_path: Path, give: dict[str, str], message: str) -> None:
    _, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    _, _, other_key = make_ca_and_server_cert(tmp_path / "other")
    files = {"cert": str(cert), "key": str(key), "other-key": str(other_key), "missing": str(tmp_path / "none.pem")}
    proc, _ = _run(tmp_path, **{name: files[value] for name, value in give.items()})
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert f"svc: {message}" in stderr


def test_https_files_reads_both_or_neither(tmp_path: Path) -> None:
    _, cert, key = make_ca_and_server_cert(tmp_path)
    assert https_files(ServiceSettings()) is None
    assert https_files(ServiceSettings(tls_cert=str(cert), tls_key=str(key))) == (str(cert), str(key))
    with pytest.raises(ConfigError, match="cannot serve HTTPS"):
        https_files(ServiceSettings(tls_cert=str(key), tls_key=str(key)))
