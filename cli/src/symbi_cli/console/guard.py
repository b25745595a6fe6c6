"""What the console checks before a request reaches its routes (plain ASGI middleware).

- :class:`BodyGate`: a post or put needs a current session *before* its body is read (FastAPI reads a form,
  uploads included, before it resolves the page's session), and no body is larger than the console reads: a
  declared ``Content-Length`` over the limit is refused at once, a chunked body as soon as its bytes pass it.
  A refusal closes the connection, so the rest of the body is not taken in.
- :class:`NoFraming`: no page of the console may be framed by another site (clickjacking).
"""

from __future__ import annotations

from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from symbi_cli.console.sessions import COOKIE

#: The largest body the console reads: an export upload (``pages_audit.MAX_EXPORT_BYTES``, 64 MiB) with its
#: checkpoint (``MAX_CHECKPOINT_BYTES``, 64 KiB) and the multipart framing around them.
MAX_BODY_BYTES = 65 * 1024 * 1024
#: The login form carries one pasted token.
MAX_LOGIN_BYTES = 64 * 1024
#: Posts that need no session: logging in, and logging out (which reads no body).
OPEN_POSTS = frozenset({"/login", "/logout"})
FRAME_ANCESTORS = "frame-ancestors 'none'"


def to_login(request: Request) -> Response:
    """No (current) session: the login page (htmx is told to go there rather than swap a fragment)."""
    if request.headers.get("HX-Request"):
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return RedirectResponse("/login", status_code=303)


class BodyGate:
    def __init__(self, app: ASGIApp, templates: Jinja2Templates) -> None:
        self.app = app
        self.templates = templates

    def _too_large(self, request: Request, limit: int) -> Response:
        values = {"message": f"the request is larger than the console accepts ({limit} bytes)", "status": 413}
        name = "error_fragment.html" if request.headers.get("HX-Request") else "error.html"
        return self.templates.TemplateResponse(request, name, values, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        limit = MAX_LOGIN_BYTES if scope["path"] == "/login" else MAX_BODY_BYTES
        refusal = None
        gated = scope["method"] in ("POST", "PUT") and scope["path"] not in OPEN_POSTS
        if gated and scope["app"].state.sessions.get(request.cookies.get(COOKIE)) is None:
            refusal = to_login(request)
        length = request.headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > limit:
            refusal = self._too_large(request, limit)
        if refusal is not None:
            refusal.headers["Connection"] = "close"  # the body stays unread: do not wait for it
            await refusal(scope, receive, send)
            return

        received, cut, started, answered = 0, False, False, False

        async def capped() -> Message:
            nonlocal received, cut, answered
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body (or one longer than it said): cut it here
                    cut = True
                    if not started:
                        too_large = self._too_large(request, limit)
                        too_large.headers["Connection"] = "close"
                        await too_large(scope, receive, send)
                        answered = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 413 has been sent: what the route makes of its cut body is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped, sending)
        except Exception:
            if not answered:
                raise  # after a cut, the route's failure to read its body has been answered already


class NoFraming:
    """``X-Frame-Options: DENY`` and a ``Content-Security-Policy`` of ``frame-ancestors 'none'`` on every answer
    (a policy a page sets itself is kept: the browser enforces both)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = "DENY"
                headers.append("Content-Security-Policy", FRAME_ANCESTORS)
            await send(message)

        await self.app(scope, receive, framed)
