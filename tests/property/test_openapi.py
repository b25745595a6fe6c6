"""Schemathesis against the OpenAPI documents of the lifecycle and context services: whatever a client sends
that the document allows (and much that it does not), the answer is never a server error.

Each service runs for real (uvicorn on a free port, real nats-server, PostgreSQL for lifecycle, the local
embedding model for context), policy enforcement ``allow-all`` so requests reach the handlers. Requests carry
the headers of :func:`operator_headers`: an admin operator's token (every API demands one).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from symbi_cli.nats_server import NatsServer
from symbi_cli.postgres_server import create_database, drop_database
from symbi_cli.provisioning import provision_nats
from symbi_common.keyfiles import init_keyring
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import load_settings
from symbi_context.main import build_app as build_context
from symbi_lifecycle.main import build_app as build_lifecycle

EXAMPLES = 25


@dataclass
class Served:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(app: FastAPI) -> Served:
    """``app`` under uvicorn in a thread of its own (its own event loop), until :func:`_stop`."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"the service on port {port} stopped while starting")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code < 500:
                return Served(base, server, thread)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service on port {port} did not start")


def _stop(served: Served) -> None:
    served.server.should_exit = True
    served.thread.join(timeout=30)


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A nats-server and a keyring shared by the services of this module: the environment they start with."""
    base = tmp_path_factory.mktemp("openapi")
    init_keyring(base / "keys")
    with NatsServer(base / "nats", log_file=base / "nats.log") as nats:
        provision_nats(nats.url)  # streams and buckets, as the admin provisions them before services start
        yield {
            "SYMBI_NATS_URL": nats.url,
            "SYMBI_KEYS_DIR": str(base / "keys"),
            "SYMBI_LOG_LEVEL": "warning",
            "SYMBI_POLICY__ENFORCEMENT": "allow-all",
            "SYMBIONT_VECTOR_DATA_PATH": str(base / "vectors"),
        }


@pytest.fixture(scope="module")
def lifecycle_api(backing: dict[str, str], pg_server: str) -> Iterator[Served]:
    name = f"test_{uuid.uuid4().hex}"
    url = asyncio.run(create_database(pg_server, name))
    served = _serve(build_lifecycle(load_settings(env={**backing, "SYMBI_DATABASE_URL": url})))
    try:
        yield served
    finally:
        _stop(served)
        asyncio.run(drop_database(pg_server, name))


@pytest.fixture(scope="module")
def context_api(backing: dict[str, str]) -> Iterator[Served]:
    served = _serve(build_context(load_settings(env=backing)))
    try:
        yield served
    finally:
        _stop(served)


@pytest.fixture
def operator_headers(backing: dict[str, str]) -> dict[str, str]:
    """Headers every generated request carries: an admin operator's token from the module's keyring."""
    return bearer_header(issue_local_token(Path(backing["SYMBI_KEYS_DIR"])))


def _schema(served: Served, headers: dict[str, str]) -> Any:
    document = httpx.get(f"{served.base_url}/openapi.json", headers=headers, timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=served.base_url)
    return schema


def _fuzz(served: Served, headers: dict[str, str]) -> list[str]:
    """Positive and negative cases for every operation of the document; the server errors met."""
    schema = _schema(served, headers)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case: Any) -> None:
                response = case.call(headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]} "
                        f"(query={case.query} body={case.body!r:.300})"
                    )

            try:
                run()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (e.g. no parameters and no body).
                assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


def test_lifecycle_api_never_answers_a_server_error(lifecycle_api: Served, operator_headers: dict[str, str]) -> None:
    assert _fuzz(lifecycle_api, operator_headers) == []


def test_context_api_never_answers_a_server_error(context_api: Served, operator_headers: dict[str, str]) -> None:
    assert _fuzz(context_api, operator_headers) == []
