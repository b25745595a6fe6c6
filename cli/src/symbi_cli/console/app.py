"""The console's FastAPI app: login, the shared page context, and the error pages.

Every page handler gets a :class:`Ctx` (the logged-in operator and a :class:`Services` client carrying that
operator's token). Pages are server-rendered (Jinja2); htmx swaps fragments for the live parts.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from symbi_common.errors import BadRequest
from symbi_common.ids import ID_RE

from symbi_cli.console.guard import BodyGate, NoFraming, to_login
from symbi_cli.console.services import ServiceCallFailed, Services
from symbi_cli.console.sessions import COOKIE, Forbidden, LoginRefused, Session, Sessions, require_change
from symbi_cli.console.views import when

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["when"] = when
#: How often a live stream re-checks its session while nothing prompts it sooner (a logout here does).
SESSION_CHECK_S = 1.0


@dataclass(frozen=True)
class ConsoleConfig:
    urls: dict[str, str]
    keys_dir: Path
    #: The console's key and its sealed sessions (``<home>/console``): sessions outlive a restart.
    state_dir: Path
    #: Where the main job's definition is read from (the "Run" form's default).
    examples_dir: Path | None = None
    #: Whom the services' certificates must come from (:func:`symbi_cli.service_http.verify`): a deployment's CA.
    verify: ssl.SSLContext | bool = True


class NotLoggedIn(Exception):
    """No (current) session: the browser is sent to the login page."""


def path_id(value: str, what: str) -> str:
    """``value`` if it is an id the services could name (agent, task, policy set, report framework), else
    :class:`BadRequest`, before any service is called: anything else would leave its route on the way to the
    service (``..`` climbs out of it, ``?`` and ``#`` cut it)."""
    if not ID_RE.match(value):
        raise BadRequest(f"{value[:140]!r} is not a {what} id (letters, digits, '_' and '-', at most 128)")
    return value


@dataclass(frozen=True)
class Ctx:
    request: Request
    session: Session
    services: Services

    def page(self, name: str, **values: Any) -> HTMLResponse:
        values.update(me=self.session.claims, can_change=self.session.can_change, csrf=self.session.csrf)
        return templates.TemplateResponse(self.request, name, values)

    async def probe(self) -> None:
        """One cheap read, so a page that calls no service still has the token checked (revocation, expiry)
        by a service: a refused token ends the session like on every other page."""
        await self.services.get("lifecycle", "/v1/agents", limit=1)

    def writer(self) -> None:
        """Refuse a page that only serves to change state to a read-only role."""
        if not self.session.can_change:
            raise Forbidden(f"role {self.session.claims.role!r} is read-only in the console; it may not change state")

    def change(self, csrf: str) -> None:
        """Refuse a state change from a read-only role or a post without the CSRF token (before any call)."""
        require_change(self.session, csrf)

    async def live(self, source: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        """``source``'s chunks (a live stream's body) for as long as this session lasts: before each chunk, and
        at least every :data:`SESSION_CHECK_S` while none comes, the token's expiry is checked, and the session
        itself (logged out, or no longer opening or verifying) once a second or as soon as a session has ended
        here. It also ends as soon as the console begins to shut down (:func:`end_live_streams`), so a browser's
        open stream does not hold up its exit. When it is over the stream ends, unsent, and ``source`` is
        closed."""
        sessions: Sessions = self.request.app.state.sessions
        sid = self.request.cookies.get(COOKIE)
        loop = asyncio.get_running_loop()
        due, ended = 0.0, sessions.ended

        def current() -> bool:
            nonlocal due, ended
            if time.time() >= self.session.claims.exp:
                return False
            if loop.time() < due and sessions.ended == ended:
                return True
            due, ended = loop.time() + SESSION_CHECK_S, sessions.ended
            return sessions.get(sid) is not None

        closing: asyncio.Event = self.request.app.state.closing
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=1)

        async def pump() -> None:
            try:
                async for chunk in source:
                    await chunks.put(chunk)
                await chunks.put(None)
            except Exception as exc:
                await chunks.put(exc)
            finally:
                await source.aclose()

        pumping = asyncio.create_task(pump())
        closed = asyncio.create_task(closing.wait())
        try:
            while current() and not closing.is_set():
                getting = asyncio.ensure_future(chunks.get())
                await asyncio.wait((getting, closed), timeout=SESSION_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    continue
                chunk = getting.result()
                if isinstance(chunk, BaseException):
                    raise chunk
                if chunk is None or not current():
                    return
                yield chunk
        finally:
            pumping.cancel()
            closed.cancel()


def ctx(request: Request) -> Ctx:
    state = request.app.state
    session = state.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise NotLoggedIn
    return Ctx(request, session, Services(state.config.urls, session.token, state.http))


CtxDep = Annotated[Ctx, Depends(ctx)]


def same_site(request: Request) -> bool:
    """Whether a post comes from the console's own pages (or was typed in): refused when the browser says
    another site sent it (``Sec-Fetch-Site``) or names another origin (``Origin``); a client that sends neither
    (curl, an old browser) is let through."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")  # host and port only: behind a TLS-terminating proxy the scheme differs
    return origin is None or urlsplit(origin).netloc.lower() == request.headers.get("Host", "").lower()


def end_live_streams(app: FastAPI) -> None:
    """End every open live stream of ``app`` now and any opened later: the console is shutting down.

    A Server-Sent Events stream never ends by itself, and the server waits for open responses before it exits;
    ended here, they let it stop at once (browsers reconnect to the console when it is back)."""
    app.state.closing.set()


def create_app(config: ConsoleConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=30.0, verify=config.verify) as http:
            app.state.http = http
            yield

    app = FastAPI(title="Symbi console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.closing = asyncio.Event()
    app.state.sessions = Sessions(config.keys_dir, config.state_dir)
    app.add_middleware(BodyGate, templates=templates)
    app.add_middleware(NoFraming)  # outermost: on the gate's refusals too
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        return to_login(request)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return templates.TemplateResponse(request, "error.html", {"message": str(exc), "status": 403}, status_code=403)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        values = {"message": f"{exc} ({exc.code})", "status": exc.http_status}
        name = "error_fragment.html" if request.headers.get("HX-Request") else "error.html"
        return templates.TemplateResponse(request, name, values, status_code=exc.http_status)

    @app.exception_handler(ServiceCallFailed)
    async def refused(request: Request, exc: ServiceCallFailed) -> Response:
        if exc.status == 401:  # the token was revoked or expired: log in again
            request.app.state.sessions.logout(request.cookies.get(COOKIE))
        status = exc.status if exc.status >= 400 else 502
        if request.headers.get("HX-Request"):  # a fragment for the target the form swaps (htmx config in base.html)
            return templates.TemplateResponse(request, "error_fragment.html", {"message": str(exc)}, status_code=status)
        return templates.TemplateResponse(
            request, "error.html", {"message": str(exc), "status": status}, status_code=status
        )

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"error": None})

    @app.post("/login")
    async def login(request: Request, token: Annotated[str, Form()] = "") -> Response:
        if not same_site(request):  # login CSRF: another site's form logging the browser in as someone else
            error = "this login was not posted from the console's own login page"
            return templates.TemplateResponse(request, "login.html", {"error": error}, status_code=403)
        try:
            sid, session = app.state.sessions.login(token)
            # The services are the judges: one read proves they accept this token (not revoked, role allowed).
            await Services(config.urls, session.token, app.state.http).get("lifecycle", "/v1/agents", limit=1)
        except (LoginRefused, ServiceCallFailed) as exc:
            return templates.TemplateResponse(request, "login.html", {"error": str(exc)}, status_code=401)
        app.state.sessions.logout(request.cookies.get(COOKIE))  # the browser's previous session, if any, ends
        response = RedirectResponse("/", status_code=303)
        # Secure when the browser reached the console over https (a TLS-terminating proxy, see docs/console.md).
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        app.state.sessions.logout(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    from symbi_cli.console import pages_audit, pages_hosts, pages_policy, pages_runtime, pages_task

    app.include_router(pages_runtime.router)
    app.include_router(pages_task.router)
    app.include_router(pages_audit.router)
    app.include_router(pages_policy.router)
    app.include_router(pages_hosts.router)
    return app
