"""The request body limit of every service's HTTP app (``[events] max_command_bytes``)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from symbi_common.errors import PayloadTooLarge, to_wire


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a typed 413 before the app sees them.

    The body (at most ``limit`` bytes) is read here and replayed to the app, so a chunked upload
    without a Content-Length is bounded too.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        received = 0
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else 0
        while size <= self.limit:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            parts.append(chunk)
            received += len(chunk)
            size = max(size, received)
            if not message.get("more_body", False):
                break
        if size > self.limit:
            err = PayloadTooLarge(size=size, limit=self.limit, what="request body")
            await JSONResponse({"error": to_wire(err)}, status_code=err.http_status)(scope, receive, send)
            return
        body = b"".join(parts)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
