"""What the console checks before a request reaches its pages, and how long a live stream lasts.

- A login posted by another site (``Sec-Fetch-Site``, ``Origin``) is refused: no login CSRF.
- Logging in again in the same browser ends its previous session.
- No page may be framed by another site (``X-Frame-Options``, CSP ``frame-ancestors``), refusals included.
- A post without a current session is sent to the login page before its body is read; a body larger than
  the console reads is refused (declared, or chunked) and the connection closed.
- A live stream (the task's, the audit feed) ends once its session does: logged out, or its token expired.

The services are an ``httpx.MockTransport`` standing in for their HTTP APIs, as in test_console_fuzz.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import Message
from symbi_cli.console import app as console_app
from symbi_cli.console import guard
from symbi_cli.console.app import ConsoleConfig, Ctx, create_app
from symbi_cli.console.services import Services
from symbi_cli.console.sessions import COOKIE, Sessions
from symbi_common.crypto import Signer
from symbi_common.keyfiles import init_keyring
from symbi_common.operator_tokens import default_operator_dir, issue_token, load_issuer_key

URLS = {name: f"http://{name}.test" for name in ("lifecycle", "scheduler", "audit", "policy", "context")}


@dataclass
class Console:
    client: TestClient
    issuer: Signer
    sessions: Sessions
    seen: list[httpx.Request]

    def login(self, role: str = "admin", *, again: bool = False, **headers: str) -> httpx.Response:
        """A login from a new browser (or, ``again``, from the one that logged in last)."""
        if not again:
            self.client.cookies.clear()
        token, _ = issue_token(self.issuer, name=f"guard-{role}", role=role, ttl_s=3600)
        return self.client.post("/login", data={"token": token}, headers=headers)


@pytest.fixture
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    init_keyring(home / "keys")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [], "total": 0})

    app = create_app(ConsoleConfig(urls=URLS, keys_dir=home / "keys", state_dir=home / "state"))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        app.state.http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        yield Console(client, load_issuer_key(default_operator_dir(home / "keys")), app.state.sessions, seen)


def test_a_login_posted_by_another_site_is_refused(console: Console) -> None:
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site to the console
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a redirect: no origin the console could trust
    ):
        refused = console.login(**headers)
        assert refused.status_code == 403, (headers, refused.text)
        assert "not posted from the console" in refused.text
        assert COOKIE not in refused.cookies
    assert console.seen == []  # refused before the token was even tried
    # From its own page (the browser says so), typed in, or from a client that says nothing: logged in.
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}, {"Sec-Fetch-Site": "none"}, {}):
        assert console.login(**headers).status_code == 303, headers


def test_logging_in_again_in_the_same_browser_ends_the_first_session(console: Console) -> None:
    first = console.login("admin").cookies[COOKIE]
    assert console.sessions.get(first) is not None
    second = console.login("auditor", again=True).cookies[COOKIE]  # the browser sends its first cookie along
    assert second != first
    assert console.sessions.get(first) is None
    assert console.sessions.get(second) is not None


def test_no_page_may_be_framed(console: Console) -> None:
    sid = console.login().cookies[COOKIE]
    answers = [
        console.client.get("/login"),
        console.client.get("/agents", headers={"Cookie": f"{COOKIE}={sid}"}),
        console.client.get("/no-such-page"),
        console.client.post("/tasks/a1/cancel", headers={"Cookie": f"{COOKIE}=gone"}),  # refused by the gate
        console.client.get("/static/console.css"),
    ]
    for answer in answers:
        assert answer.headers["X-Frame-Options"] == "DENY", answer.request.url
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"], answer.request.url


async def test_a_post_without_a_session_goes_to_login_before_its_body_is_read(console: Console) -> None:
    """At the ASGI interface: the gate answers without asking for a single byte of the body."""
    read: list[Message] = []

    async def receive() -> Message:
        read.append({"type": "http.request"})
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    for cookie, hx in ((b"", b""), (f"{COOKIE}=not-a-session".encode(), b""), (b"", b"true")):
        sent: list[Message] = []

        async def send(message: Message, sent: list[Message] = sent) -> None:
            sent.append(message)

        headers = [(b"content-length", b"100000000"), (b"cookie", cookie), (b"hx-request", hx)]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/audit/verify", "raw_path": b"/audit/verify", "query_string": b"", "root_path": "",
            "headers": [(k, v) for k, v in headers if v], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        }  # fmt: skip
        await console.client.app(scope, receive, send)
        start = dict(MutableHeaders(raw=sent[0]["headers"]))
        assert (sent[0]["status"], start.get("location", start.get("hx-redirect"))) in (
            (303, "/login"),
            (401, "/login"),
        )
        assert start["connection"] == "close"
    assert read == []
    assert console.seen == []


def test_a_body_larger_than_the_console_reads_is_refused(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "MAX_BODY_BYTES", 4096)
    sid = console.login().cookies[COOKIE]
    console.seen.clear()
    declared = console.client.post("/audit/verify", content=b"x" * 5000, headers={"Cookie": f"{COOKIE}={sid}"})
    assert declared.status_code == 413, declared.text
    assert "larger than the console accepts (4096 bytes)" in declared.text
    assert declared.headers["connection"] == "close"

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut as its bytes pass the limit
        yield from (b"y" * 1024 for _ in range(8))

    form = {"Cookie": f"{COOKIE}={sid}", "Content-Type": "multipart/form-data; boundary=b"}
    cut = console.client.post("/audit/verify", content=chunked(), headers=form)
    assert cut.status_code == 413, cut.text
    huge_login = console.client.post("/login", content=b"token=" + b"z" * (guard.MAX_LOGIN_BYTES + 1))
    assert huge_login.status_code == 413
    assert console.seen == []
    # Under the limit the page answers as before.
    small = console.client.post(
        "/audit/verify", files={"export": ("e.jsonl", b"{}")}, headers={"Cookie": f"{COOKIE}={sid}"}
    )
    assert small.status_code == 200, small.text


def _ctx(console: Console, sid: str) -> Ctx:
    app = console.client.app
    scope = {"type": "http", "app": app, "headers": [(b"cookie", f"{COOKIE}={sid}".encode())]}
    session = console.sessions.get(sid)
    assert session is not None
    return Ctx(Request(scope), session, Services(URLS, session.token, httpx.AsyncClient()))


async def _endless(closed: asyncio.Event) -> AsyncGenerator[bytes, None]:
    try:
        while True:
            yield b"data: tick\n\n"
            await asyncio.sleep(0.05)
    finally:
        closed.set()


async def test_a_live_stream_ends_with_its_session(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logged out (here or in another tab): the stream sends nothing more within moments and its source is
    closed; a quiet stream notices too; another session's stream goes on."""
    monkeypatch.setattr(console_app, "SESSION_CHECK_S", 0.2)
    ended, kept = console.login().cookies[COOKIE], console.login("auditor").cookies[COOKIE]
    closed, still = asyncio.Event(), asyncio.Event()
    stream, other = _ctx(console, ended).live(_endless(closed)), _ctx(console, kept).live(_endless(still))
    assert await anext(stream) == b"data: tick\n\n"
    assert await anext(other) == b"data: tick\n\n"
    console.sessions.logout(ended)
    started = time.monotonic()
    rest = [chunk async for chunk in stream]
    assert time.monotonic() - started < 1.0
    assert len(rest) <= 1  # at most the chunk already in hand when the logout came
    await asyncio.wait_for(closed.wait(), 1)
    assert await anext(other) == b"data: tick\n\n"
    assert not still.is_set()
    await other.aclose()

    async def quiet() -> AsyncGenerator[bytes, None]:
        yield b": open\n\n"
        await asyncio.sleep(3600)
        yield b"never"

    sid = console.login().cookies[COOKIE]
    stream = _ctx(console, sid).live(quiet())
    assert await anext(stream) == b": open\n\n"
    console.sessions.store.delete(sid)  # ended elsewhere (another console process): the periodic check
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 2)


async def test_a_live_stream_ends_when_its_token_expires(console: Console) -> None:
    token, claims = issue_token(console.issuer, name="short", role="auditor", ttl_s=60, now=int(time.time()) - 58)
    sid, _ = console.sessions.login(token)
    closed = asyncio.Event()
    stream = _ctx(console, sid).live(_endless(closed))
    assert await anext(stream) == b"data: tick\n\n"
    rest = [chunk async for chunk in stream]
    assert time.time() >= claims.exp
    assert 0 < len(rest) < 100
    await asyncio.wait_for(closed.wait(), 1)
