"""The console's own HTTP routes under hostile input (property tests, in process, the services faked).

What a browser sends the console — path parameters, query strings, form fields, uploads, the session cookie —
and what the services hand back from agents (names, event fields, task output) is untrusted. Whatever it is:

- the answer is a page or a clear 4xx, never a server error;
- without a current session nothing reaches a service (fail closed: the login page);
- a path parameter never leaves its own route on the way to a service: no ``..`` climbing into another route,
  no ``?``/``#`` cutting the path into a query, no other method;
- nothing an agent wrote is rendered as markup, on any page or fragment;
- a relayed Server-Sent Event stays one event, whatever the refusal it carries says.

The services are an ``httpx.MockTransport`` standing in for their HTTP APIs (no runtime started).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_cli.console.app import ConsoleConfig, create_app
from symbi_cli.console.sessions import COOKIE
from symbi_common.keyfiles import init_keyring
from symbi_common.operator_tokens import default_operator_dir, issue_token, load_issuer_key

SERVICES = ("lifecycle", "scheduler", "audit", "policy", "context", "sandbox-agent")
URLS = {name: f"http://{name}.test" for name in SERVICES}
GOOD_ID = "a1"
#: Markup an agent could put into its name, an event field, its output: it must only ever show as text.
MARK = "<script>x1()</script>"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Path parameters: ids, and what would climb out of a route or cut it (dots, slashes, ?, #, %, controls, non-ASCII).
IDENTS = st.one_of(
    st.sampled_from(["..", ".", "a/..", "../agents", "a?x=1", "a#b", "%2e%2e", "a%2Fb", "a b", "١٢", "a\r\nX: y", ""]),
    st.text(alphabet=st.sampled_from("a1_-./?#%&=;: \\\r\n\x00é<>\"'"), min_size=1, max_size=12),
    st.text(max_size=8),
)
HOSTILE = st.one_of(st.just(MARK), st.builds(lambda a, b: a + MARK + b, st.text(max_size=6), st.text(max_size=6)))


def _enc(value: str) -> str:
    """Every byte percent-encoded but letters and digits, so the client does not fold ``..`` away itself."""
    return "".join(c if c.isascii() and c.isalnum() else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


@dataclass
class Fake:
    """The services' APIs: canned answers whose agent-written fields are ``text``; every request recorded."""

    text: str = "hello"
    seen: list[httpx.Request] = field(default_factory=list)
    refusal: str = "no"

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        service, path, t = request.url.host.removesuffix(".test"), request.url.path, self.text
        event = {
            "sequence": 1,
            "subject": t,
            "event_type": t,
            "type": t,
            "producer": t,
            "aggregate_type": "task",
            "aggregate_id": t,
            "aggregate_version": 1,
            "occurred_at": t,
            "signing_key_id": t,
            "verified": True,
            "data": {"decision": {"effect": t, "action": t, "policies": [t], "reason": t}, "registered_by": t},
        }
        agent = {
            "id": t,
            "name": t,
            "version": t,
            "state": t,
            "suspension_reason": t,
            "updated_at": t,
            "config": {"capabilities": [t], "external_apis": [t], "network_access": [t]},
        }
        task = {
            "task_id": t,
            "agent_id": GOOD_ID,
            "priority": t,
            "status": "running",
            "outcome": t,
            "host_id": t,
            "tier": t,
            "detail": t,
            "wait_reason": t,
            "decision": {"effect": t, "policies": [t]},
        }
        answers: dict[tuple[str, str], Any] = {
            ("lifecycle", "/v1/agents"): {"items": [agent], "total": 1},
            ("lifecycle", f"/v1/agents/{GOOD_ID}"): agent,
            ("lifecycle", f"/v1/agents/{GOOD_ID}/events"): {"items": [event]},
            ("scheduler", "/v1/tasks"): {"items": [task], "total": 1},
            ("scheduler", "/v1/status"): {"queues": {t: 1}, "running": [], "hosts": [], "replica": t, "strategy": t},
            ("scheduler", f"/v1/tasks/{GOOD_ID}"): task,
            ("scheduler", f"/v1/tasks/{GOOD_ID}/output"): {"data_base64": "PHNjcmlwdD4=", "next_offset": 8},
            ("scheduler", f"/v1/tasks/{GOOD_ID}/cancel"): {"ok": True},
            ("audit", "/v1/audit/events"): {"items": [event], "next_after": None},
            ("audit", f"/v1/audit/reports/{GOOD_ID}"): {"report": t},
            ("context", "/v1/memories"): {"items": [{"text": t, "kind": t, "tags": [t], "origin": {t: t}}], "total": 1},
            ("policy", "/v1/policy-sets"): {"items": [{"set_id": t, "description": t}], "policy_version": 1},
            ("policy", f"/v1/policy-sets/{GOOD_ID}"): {"set_id": GOOD_ID, "cedar": t, "origin": t, "policies": []},
            ("policy", f"/v1/policy-sets/{GOOD_ID}/what-if"): {"changes": []},
        }
        if (service, path) in answers:
            return httpx.Response(200, json=answers[service, path])
        error = {"code": "not_found", "message": self.refusal, "details": {}}
        return httpx.Response(404 if service != "audit" else 400, json={"error": error})


@dataclass
class Console:
    client: TestClient
    fake: Fake
    admin: str
    auditor: str
    csrf: str

    def reset(self, text: str = "hello") -> None:
        self.fake.seen.clear()
        self.fake.text = text
        self.fake.refusal = "no"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    keys = home / "keys"
    init_keyring(keys)
    issuer = load_issuer_key(default_operator_dir(keys))
    app = create_app(ConsoleConfig(urls=URLS, keys_dir=keys, state_dir=home / "state"))
    fake = Fake()
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        app.state.http = httpx.AsyncClient(transport=httpx.MockTransport(fake.handle))
        sids = {}
        for role in ("admin", "auditor"):
            client.cookies.clear()  # two browsers: logging in again in the same one would end its first session
            token, _ = issue_token(issuer, name=f"fuzz-{role}", role=role, ttl_s=3600)
            answer = client.post("/login", data={"token": token})
            assert answer.status_code == 303, answer.text
            sids[role] = answer.cookies[COOKIE]
        client.cookies.clear()
        session = app.state.sessions.get(sids["admin"])
        yield Console(client, fake, sids["admin"], sids["auditor"], session.csrf)


def _request(
    c: Console, method: str, path: str, sid: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    return c.client.request(method, path, headers={**(headers or {}), "Cookie": f"{COOKIE}={sid}"}, **kwargs)


def _get(c: Console, path: str, sid: str, **kwargs: Any) -> httpx.Response:
    return _request(c, "GET", path, sid, **kwargs)


def _post(c: Console, path: str, sid: str, **kwargs: Any) -> httpx.Response:
    return _request(c, "POST", path, sid, **kwargs)


def _typed_4xx_or_page(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])
    if 400 <= answer.status_code < 500 and answer.status_code not in (401, 404, 405):
        # A refusal the console makes says what it refused (its error page or a validation error), not nothing.
        assert answer.text.strip(), answer


#: For each route with a path parameter: the method and the paths a service may be asked for with ``x`` in them.
def _routes(x: str) -> list[tuple[str, str, dict[str, Any], set[tuple[str, str]]]]:
    return [
        ("GET", f"/agents/{_enc(x)}", {}, {("GET", f"/v1/agents/{x}"), ("GET", f"/v1/agents/{x}/events")}),
        ("GET", f"/tasks/{_enc(x)}", {}, {("GET", f"/v1/tasks/{x}"), ("GET", f"/v1/tasks/{x}/output")}),
        ("GET", f"/tasks/{_enc(x)}/stream", {}, {("GET", f"/v1/tasks/{x}"), ("GET", f"/v1/tasks/{x}/output")}),
        ("POST", f"/tasks/{_enc(x)}/cancel", {"csrf": True}, {("POST", f"/v1/tasks/{x}/cancel")}),
        ("GET", f"/policy/{_enc(x)}", {}, {("GET", f"/v1/policy-sets/{x}")}),
        (
            "POST",
            f"/policy/{_enc(x)}/what-if",
            {"cedar": "permit(principal, action, resource);"},
            {("POST", f"/v1/policy-sets/{x}/what-if")},
        ),
        ("GET", f"/audit/reports/{_enc(x)}", {}, {("GET", f"/v1/audit/reports/{x}")}),
    ]


#: Paths every page may read that carry no path parameter (lists; the id, if any, goes in the query).
SHARED = {
    "/v1/agents",
    "/v1/tasks",
    "/v1/audit/events",
    "/v1/memories",
    "/v1/status",
    "/v1/host",
    "/v1/audit/stream",
    "/v1/audit/proofs/inclusion",
}


@SETTINGS
@given(x=IDENTS)
def test_a_path_parameter_stays_in_its_own_route(console: Console, x: str) -> None:
    for method, path, form, allowed in _routes(x):
        console.reset()
        data = {k: (console.csrf if v is True else v) for k, v in form.items()}
        answer = _request(console, method, path, console.admin, data=data or None)
        _typed_4xx_or_page(answer)
        for sent in console.fake.seen:
            where = (sent.method, sent.url.path)
            if sent.url.path in SHARED and sent.method == "GET":
                continue
            # The parameter reached the service as exactly the one segment of this route: nothing cut or climbed.
            assert where in allowed, (path, where, str(sent.url))
            assert "?" not in x
            assert "#" not in x
            assert x not in ("", ".", "..")


ROUTES = [
    ("GET", "/agents"),
    ("GET", f"/agents/{GOOD_ID}"),
    ("GET", "/tasks"),
    ("GET", "/tasks/live"),
    ("GET", f"/tasks/{GOOD_ID}"),
    ("GET", f"/tasks/{GOOD_ID}/stream"),
    ("POST", f"/tasks/{GOOD_ID}/cancel"),
    ("GET", "/run"),
    ("POST", "/run"),
    ("GET", "/events"),
    ("GET", "/events/stream"),
    ("GET", "/audit"),
    ("GET", "/audit/proof/1"),
    ("POST", "/audit/verify"),
    ("GET", f"/audit/reports/{GOOD_ID}"),
    ("GET", "/policy"),
    ("GET", f"/policy/{GOOD_ID}"),
    ("POST", f"/policy/{GOOD_ID}/what-if"),
    ("GET", "/hosts"),
    ("GET", "/hosts/numbers"),
]
COOKIES = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from('Aa0_-=;. \\"\t'), max_size=50),
    st.just("A" * 43),
    st.from_regex(r"[A-Za-z0-9_-]{43}", fullmatch=True),
)


@SETTINGS
@given(cookie=COOKIES, hx=st.booleans(), bearer=st.booleans())
def test_no_session_reaches_no_service(console: Console, cookie: str | None, hx: bool, bearer: bool) -> None:
    headers = {"HX-Request": "true"} if hx else {}
    if bearer:  # a bearer token is no session either: the console only knows its cookie
        headers["Authorization"] = "Bearer x"
    for method, path in ROUTES:
        console.reset()
        sent = {**headers, "Cookie": f"{COOKIE}={cookie}"} if cookie is not None else headers
        answer = console.client.request(method, path, headers=sent, data={"csrf": "x", "definition": "d"})
        assert console.fake.seen == [], (method, path, cookie)
        if hx:
            assert answer.status_code == 401
            assert answer.headers["HX-Redirect"] == "/login"
        else:
            assert answer.status_code == 303, (method, path, answer.status_code)
            assert answer.headers["location"] == "/login"


@SETTINGS
@given(csrf=st.text(max_size=40), role=st.sampled_from(["admin", "auditor"]))
def test_a_state_change_without_the_csrf_token_or_by_an_auditor_is_refused_before_any_call(
    console: Console, csrf: str, role: str
) -> None:
    sid = console.admin if role == "admin" else console.auditor
    for path, form in ((f"/tasks/{GOOD_ID}/cancel", {}), ("/run", {"definition": "agent x() {}", "input": "i"})):
        console.reset()
        answer = _post(console, path, sid, data={**form, "csrf": csrf})
        if role == "admin" and csrf == console.csrf:
            continue
        assert answer.status_code == 403, (path, csrf, answer.status_code, answer.text[:300])
        assert "forbidden" in answer.text.lower() or "csrf" in answer.text.lower() or "read-only" in answer.text
        assert console.fake.seen == []


@SETTINGS
@given(token=st.one_of(st.text(max_size=80), st.builds(lambda a, b: f"{a}.{b}", st.text(max_size=30), st.text())))
def test_a_pasted_token_logs_in_or_is_refused_on_the_login_page(console: Console, token: str) -> None:
    console.reset()
    answer = console.client.post("/login", data={"token": token})
    console.client.cookies.clear()
    assert answer.status_code == 401, (token, answer.status_code, answer.text[:300])
    assert COOKIE not in answer.headers.get("set-cookie", "")
    assert 'id="login-error"' in answer.text


def _no_markup(body: str, where: str) -> None:
    assert "<script>x1" not in body, where
    assert "x1()" not in body or "&lt;script&gt;x1()" in body or "\\u003cscript\\u003ex1()" in body, where


@SETTINGS
@given(text=HOSTILE)
def test_nothing_an_agent_wrote_is_rendered_as_markup(console: Console, text: str) -> None:
    pages = [
        "/agents",
        f"/agents/{GOOD_ID}",
        "/tasks",
        "/tasks/live",
        f"/tasks/{GOOD_ID}",
        "/policy",
        f"/policy/{GOOD_ID}",
        "/hosts",
    ]
    for page in pages:
        console.reset(text)
        answer = _get(console, page, console.admin)
        assert answer.status_code == 200, (page, answer.text[:300])
        _no_markup(answer.text, page)
        if page not in ("/hosts",):
            assert "&lt;script&gt;x1()" in answer.text, page  # the text is shown, as text
    # A service's refusal quoting what an agent wrote: on the error page and in the htmx fragment.
    for hx in (False, True):
        console.reset(text)
        console.fake.refusal = text
        answer = _get(console, "/agents/missing", console.admin, headers={"HX-Request": "true"} if hx else {})
        assert answer.status_code == 404
        _no_markup(answer.text, "refusal")
    # The task stream's status fragment is HTML the page inserts: escaped there too.
    console.reset(text)
    console.fake.refusal = text
    answer = _get(console, f"/tasks/{GOOD_ID}/stream", console.admin)
    assert answer.status_code == 200
    _no_markup(answer.text, "stream")


_SSE_LINE = re.compile(r"\r\n|\r|\n")


@SETTINGS
@given(refusal=st.text(alphabet=st.sampled_from("ab \r\n:<>éevntdai"), max_size=60), agent=st.text(max_size=10))
def test_a_relayed_refusal_is_one_server_sent_event(console: Console, refusal: str, agent: str) -> None:
    console.reset()
    console.fake.refusal = refusal
    answer = _get(console, "/events/stream", console.admin, params={"agent": agent, "event_type": "x"})
    assert answer.status_code == 200
    lines = _SSE_LINE.split(answer.text)
    assert lines[0] == "event: failed", lines
    assert lines[1].startswith("data: "), lines
    assert lines[2:] == ["", ""], lines  # one event: nothing of the refusal became a line of its own
    (sent,) = console.fake.seen
    assert sent.url.path == "/v1/audit/stream"
    assert sent.url.params.get("agent", "") == agent


@SETTINGS
@given(
    export=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda t: json.dumps(t).encode(),
            st.dictionaries(
                st.sampled_from(["sequence", "subject", "event", "leaf_hash", "kind"]),
                st.one_of(st.integers(), st.text(max_size=8), st.none(), st.lists(st.integers(), max_size=2)),
            ),
        ),
    ),
    checkpoint=st.one_of(st.none(), st.binary(max_size=80), st.text(max_size=80).map(str.encode)),
)
def test_an_uploaded_export_is_verified_or_refused_on_the_page(
    console: Console, export: bytes, checkpoint: bytes | None
) -> None:
    console.reset()
    files: dict[str, tuple[str, bytes]] = {"export": ("export.jsonl", export)}
    if checkpoint is not None:
        files["checkpoint"] = ("checkpoint.txt", checkpoint)
    answer = _post(console, "/audit/verify", console.auditor, files=files)
    assert answer.status_code == 200, (answer.status_code, answer.text[:500])
    assert 'id="verify-error"' in answer.text or 'id="verify-verdict"' in answer.text


@SETTINGS
@given(fmt=st.text(max_size=10), sequence=st.sampled_from(["1", "-1", "٣", "1_0", " 1", "1e3", "0x1", "9" * 30]))
def test_query_and_number_parameters_are_answered_or_refused(console: Console, fmt: str, sequence: str) -> None:
    console.reset()
    answer = _get(console, f"/audit/reports/{GOOD_ID}", console.admin, params={"format": fmt})
    assert answer.status_code == 200
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="symbi-{GOOD_ID}-report.{fmt if fmt in ("json", "csv") else "csv"}"'
    )
    console.reset()
    answer = _get(console, f"/audit/proof/{_enc(sequence)}", console.admin)
    _typed_4xx_or_page(answer)
    for sent in console.fake.seen:  # a number reaches the audit service only as ASCII digits it was given as
        if sent.url.path.startswith("/v1/audit/events/"):
            assert re.fullmatch(r"-?[0-9]+", sent.url.path.rsplit("/", 1)[1])
            assert sequence.isascii()


def test_the_fixture_pages_render(console: Console) -> None:
    """The fake answers are enough for every page: the properties above are not vacuous."""
    for page in ("/agents", f"/agents/{GOOD_ID}", f"/tasks/{GOOD_ID}", f"/policy/{GOOD_ID}", "/hosts", "/events"):
        console.reset()
        assert _get(console, page, console.admin).status_code == 200, page
