"""Schemathesis against the OpenAPI document of every service: whatever a client sends that the document allows
(and much that it does not), the answer is never a server error, it has the shape the document gives for its
status, and an error is typed (``{"error": {"code", "message", "details"}}``).

Each service runs for real (uvicorn on a free port, one real nats-server for all of them, PostgreSQL for the
lifecycle and audit services, the local embedding model for context, Docker for the sandbox-agent), policy
enforcement ``allow-all`` so requests reach the handlers. Requests carry the headers of :func:`operator_headers`:
an admin operator's token (every API demands one). The operations come from each service's own document, so a
route added to any service is fuzzed without anyone remembering to add it; every path parameter also gets the
values random generation rarely finds (NATS wildcards and separators, overlong ids, numbers past 64 bits).

The same services' NATS commands (``cmd.<service>.<action>``, every action the command server serves) get
garbage bytes, arbitrary JSON under the request type's field names, and bodies schemathesis generates from the
request type's JSON schema: the reply is always the result or a typed error, never the internal one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance
from symbi_audit.main import build_app as build_audit
from symbi_cli.nats_server import NatsServer
from symbi_cli.postgres_server import create_database, drop_database
from symbi_cli.provisioning import provision_nats
from symbi_common.keyfiles import init_keyring
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import Settings, load_settings
from symbi_context.main import build_app as build_context
from symbi_contracts.subjects import SERVICES as ALL_SERVICES
from symbi_fixtures.runtimes import take_free_port
from symbi_lifecycle.main import build_app as build_lifecycle
from symbi_policy.main import build_app as build_policy
from symbi_sandbox_agent.main import build_app as build_sandbox_agent
from symbi_scheduler.main import build_app as build_scheduler

#: Examples per operation and mode (positive: what the document allows; negative: what it does not), and the
#: time one service's fuzzing may take, shared equally between its operations and modes. ``SYMBI_FUZZ_SCALE``
#: multiplies both (and the commands' below) for a deeper run than the default suite's.
FUZZ_SCALE = float(os.environ.get("SYMBI_FUZZ_SCALE", "1"))
MAX_EXAMPLES = round(25 * FUZZ_SCALE)
BUDGET_S = 20.0 * FUZZ_SCALE
#: The same for the service's NATS commands (``cmd.<service>.<action>``).
COMMAND_EXAMPLES = round(15 * FUZZ_SCALE)
COMMAND_BUDGET_S = 10.0 * FUZZ_SCALE


@dataclass
class Served:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: FastAPI


@dataclass(frozen=True)
class Service:
    build: Callable[[Settings], FastAPI]
    database: bool = False


SERVICES: dict[str, Service] = {
    "lifecycle": Service(build_lifecycle, database=True),
    "policy": Service(build_policy),
    "scheduler": Service(build_scheduler),
    "audit": Service(build_audit, database=True),
    "sandbox-agent": Service(build_sandbox_agent),
    "context": Service(build_context),
}


@schemathesis.serializer("application/toml")
def _toml(ctx: Any, value: Any) -> dict[str, bytes]:
    """A TOML body (the audit service's custom report framework) as sent: text, whatever was generated."""
    return {"data": value if isinstance(value, bytes) else str(value).encode()}


def _serve(app: FastAPI) -> Served:
    """``app`` under uvicorn in a thread of its own (its own event loop), until :func:`_stop`."""
    port = take_free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=10
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"the service on port {port} stopped while starting")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return Served(base, server, thread, app)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the service on port {port} did not become ready")


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
            "SYMBI_SANDBOX__HOST_ID": f"fuzz-{uuid.uuid4().hex[:8]}",
            "SYMBI_SANDBOX__WORK_DIR": str(base / "work"),
        }


@pytest.fixture
def serve(backing: dict[str, str], pg_server: str) -> Iterator[Callable[[str], Served]]:
    """``serve(name)``: the named service running on the module's backing services (and a fresh database)."""
    running: list[tuple[Served, str | None]] = []

    def start(name: str) -> Served:
        env = dict(backing)
        database = None
        if SERVICES[name].database:
            database = f"test_{uuid.uuid4().hex}"
            env["SYMBI_DATABASE_URL"] = asyncio.run(create_database(pg_server, database))
        served = _serve(SERVICES[name].build(load_settings(env=env)))
        running.append((served, database))
        return served

    yield start
    for served, database in running:
        _stop(served)
        if database is not None:
            asyncio.run(drop_database(pg_server, database))


@pytest.fixture
def operator_headers(backing: dict[str, str]) -> dict[str, str]:
    """Headers every generated request carries: an admin operator's token from the module's keyring."""
    return bearer_header(issue_local_token(Path(backing["SYMBI_KEYS_DIR"])))


def _schema(served: Served, headers: dict[str, str]) -> Any:
    document = httpx.get(f"{served.base_url}/openapi.json", headers=headers, timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=served.base_url)
    # Every request carries the token: leaving it out is tests/api/test_operator_auth.py's business, and a
    # request refused at the door never reaches the handlers this test is about.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def typed_error(response: Any) -> str | None:
    """What is wrong with an error response's body, if anything: every 4xx/5xx is ``{"error": {code, message,
    details}}`` with a non-empty code and message."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"an untyped error body: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if (
        not isinstance(error, dict)
        or set(error) != {"code", "message", "details"}
        or not isinstance(error["code"], str)
        or not error["code"]
        or not isinstance(error["message"], str)
        or not error["message"]
        or not isinstance(error["details"], dict)
    ):
        return f"an untyped error body: {response.text[:200]!r}"
    return None


def _streams(operation: Any) -> bool:
    """Whether the operation answers with a stream (Server-Sent Events) that stays open."""
    ok = operation.definition.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in ok.get("content", {})


def _call_streaming(case: Any, headers: dict[str, str]) -> tuple[int, str]:
    """Status and first bytes of a streaming operation (the stream itself never ends)."""
    kwargs = case.as_transport_kwargs(headers=headers)
    with httpx.stream(
        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=kwargs.get("headers"), timeout=10
    ) as response:
        first = b""
        for chunk in response.iter_bytes():
            first = chunk
            break
        return response.status_code, first.decode(errors="replace")


def _check(case: Any, headers: dict[str, str], streams: bool) -> list[str]:
    """Send one generated request; what is wrong with the answer (nothing: ``[]``)."""
    sent = f"(path={case.path_parameters} query={case.query} body={case.body!r:.300})"
    if streams:
        status, first = _call_streaming(case, headers)
        if status >= 500 or (status == 200 and not first.startswith(":")):
            return [f"{case.method} {case.formatted_path} -> {status}: {first[:200]} {sent}"]
        return []
    response = case.call(headers=headers, timeout=30)
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    problems: list[str] = []
    try:
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    except Failure as exc:
        problems.append(f"{where}: {exc.title}: {response.text[:300]} {sent}")
    except FailureGroup as group:
        titles = "; ".join(e.title for e in group.exceptions)
        problems.append(f"{where}: {titles}: {response.text[:300]} {sent}")
    if (problem := typed_error(response)) is not None:
        problems.append(f"{where}: {problem} {sent}")
    return problems


def _fuzz(served: Served, headers: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Positive and negative cases for every operation of the document: the problems met, and how many
    requests each operation and mode got.

    Each operation and mode has an equal share of :data:`BUDGET_S`; once it is spent the remaining examples
    are not sent (an operation that answers slowly by design, such as a submission that waits for its agent
    to appear, gets fewer requests rather than stretching the suite)."""
    schema = _schema(served, headers)
    failures: list[str] = []
    sent: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    share = BUDGET_S / (2 * len(operations))
    for operation in operations:
        streams = _streams(operation)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            key = f"{operation.label} {mode.value}"
            sent[key] = 0
            until = time.monotonic() + share

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case: Any) -> None:
                if sent[key] and time.monotonic() > until:  # noqa: B023 (run is called within this iteration)
                    return
                sent[key] += 1  # noqa: B023
                failures.extend(_check(case, headers, streams))  # noqa: B023

            try:
                run()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (e.g. no parameters and no body).
                assert mode is GenerationMode.NEGATIVE, operation.label
                del sent[key]
        failures.extend(_nasty_paths(operation, headers, streams))
    return failures, sent


#: Path values random generation rarely hits: NATS wildcards and separators (ids become subject tokens), an
#: empty-looking or overlong id, numbers past 64 bits, a NUL.
NASTY = (">", "*", "a.b", "a b", "..", "-1", "9" * 40, "x" * 3000, "\x00")


def _nasty_paths(operation: Any, headers: dict[str, str], streams: bool) -> list[str]:
    """Every path parameter of ``operation`` set to each :data:`NASTY` value (the rest as generated)."""
    names = [p.name for p in operation.path_parameters]
    failures: list[str] = []
    for value in NASTY if names else ():

        @given(case=operation.as_strategy(path_parameters=dict.fromkeys(names, value)))
        @settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            failures.extend(_check(case, headers, streams))

        run()
    return failures


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


def _command_bodies(request_type: type[Any]) -> st.SearchStrategy[bytes]:
    fields = [*getattr(request_type, "__struct_fields__", ()), "unknown"]
    shaped = st.dictionaries(st.sampled_from(fields), _values, max_size=6).map(msgspec.json.encode)
    return st.binary(max_size=80) | shaped | _valid_bodies(request_type)


def _valid_bodies(request_type: type[Any]) -> st.SearchStrategy[bytes]:
    """Bodies the request type's JSON schema allows (so the handlers are reached), generated by schemathesis
    from a one-operation document, as it generates the HTTP APIs' bodies."""
    (schema,), components = msgspec.json.schema_components([request_type], ref_template="#/components/schemas/{name}")
    content = {"application/json": {"schema": schema}}
    operation = {"requestBody": {"required": True, "content": content}, "responses": {"200": {"description": "OK"}}}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "command", "version": "1"},
        "paths": {"/command": {"post": operation}},
        "components": {"schemas": components},
    }
    (result,) = schemathesis.openapi.from_dict(document).get_all_operations()
    strategy = result.ok().as_strategy(generation_mode=GenerationMode.POSITIVE)
    return strategy.map(lambda case: msgspec.json.encode(case.body))


def typed_reply(data: bytes) -> str | None:
    """What is wrong with a command's reply, if anything: ``{"ok": true, "result"}`` or a typed error that is
    not the internal one (``symbi_error``: an exception the handler did not expect)."""
    reply = msgspec.json.decode(data)
    if reply.get("ok") is True:
        return None
    error = reply.get("error")
    if not isinstance(error, dict) or set(error) != {"code", "message", "details"} or not error["message"]:
        return f"an untyped error reply: {data[:200]!r}"
    if error["code"] == "symbi_error":
        return f"an internal error: {error['message'][:200]}"
    return None


def _fuzz_commands(served: Served, nats_url: str) -> tuple[list[str], dict[str, int]]:
    """Every NATS command the service serves, with Hypothesis bodies: the problems met and the requests sent."""
    server = served.app.state.runtime.commands
    actions: dict[str, type[Any]] = server.actions
    assert actions, f"{server.service} serves no command"
    failures: list[str] = []
    sent: dict[str, int] = {}
    share = COMMAND_BUDGET_S / len(actions)
    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(nats.connect(nats_url))
    try:
        for action, request_type in actions.items():
            subject = f"cmd.{server.service}.{action}"
            sent[subject] = 0
            until = time.monotonic() + share

            @given(data=_command_bodies(request_type))
            @settings(max_examples=COMMAND_EXAMPLES, deadline=None, database=None)
            def run(data: bytes) -> None:
                if sent[subject] and time.monotonic() > until:  # noqa: B023 (run is called within this iteration)
                    return
                sent[subject] += 1  # noqa: B023
                try:
                    msg = loop.run_until_complete(nc.request(subject, data, timeout=15))  # noqa: B023
                except nats.errors.TimeoutError:
                    failures.append(f"{subject}: no answer within 15 s to {data[:200]!r}")  # noqa: B023
                    return
                if (problem := typed_reply(msg.data)) is not None:
                    failures.append(f"{subject}: {problem} (body {data[:200]!r})")  # noqa: B023

            run()
    finally:
        loop.run_until_complete(nc.close())
        loop.close()
    return failures, sent


def test_every_service_is_fuzzed() -> None:
    """A service added to the runtime (the catalogue of subjects lists them all) must be added here too."""
    assert set(SERVICES) == set(ALL_SERVICES)


@pytest.mark.parametrize("name", list(SERVICES))
def test_an_api_never_answers_a_server_error_nor_outside_its_document(
    name: str, serve: Callable[[str], Served], operator_headers: dict[str, str]
) -> None:
    served = serve(name)
    started = time.monotonic()
    failures, sent = _fuzz(served, operator_headers)
    assert failures == [], "\n".join(failures)
    assert all(sent.values()), sent  # every operation was called in each mode it has
    assert time.monotonic() - started < 3 * BUDGET_S, "the fuzzing of one service should stay within its budget"


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_command_never_answers_an_internal_error(
    name: str, serve: Callable[[str], Served], backing: dict[str, str]
) -> None:
    failures, sent = _fuzz_commands(serve(name), backing["SYMBI_NATS_URL"])
    assert failures == [], "\n".join(failures)
    assert all(sent.values()), sent
