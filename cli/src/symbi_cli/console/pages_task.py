"""One task's page: its status, output and charts, streamed to the browser while it runs; Cancel.

The stream (``GET /tasks/{id}/stream``, Server-Sent Events) is driven by the audit service's live feed: the
console follows it (with the operator's token) and, at each verified ``task.<id>`` or ``execution.<id>``
event, reads what changed from the scheduler — the new output bytes of each stream and the task's status —
and sends only that. Nothing is polled on a timer; the sandbox emits output while the workload runs (every
flush of its collector), so the page shows it as it is produced, one audit verification later.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from symbi_cli.console.app import Ctx, CtxDep, path_id, templates
from symbi_cli.console.reads import host_of
from symbi_cli.console.services import ServiceCallFailed, Services
from symbi_cli.console.views import FINISHED, task_usage

router = APIRouter()

STREAMS = ("stdout", "stderr")
#: How long the stream waits for the scheduler's view to show an end the audit feed already announced.
SETTLE_S = 10.0
#: How long the audit feed may take to open before the stream reports it cannot follow the task.
OPEN_S = 15.0


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event whose data is ``data`` as JSON (one line, whatever the HTML inside holds)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task(task_id: str, c: CtxDep) -> Response:
    path_id(task_id, "task")
    view = await c.services.get("scheduler", f"/v1/tasks/{task_id}")
    out = await _output(c.services, task_id, "stdout", 0)
    err = await _output(c.services, task_id, "stderr", 0)
    return c.page(
        "task.html",
        task=view,
        finished=view.get("status") in FINISHED,
        stdout=base64.b64decode(out["data_base64"]).decode(errors="replace"),
        stderr=base64.b64decode(err["data_base64"]).decode(errors="replace"),
        usage=await _usage(c, view),
    )


async def _output(services: Services, task_id: str, stream: str, after: int) -> dict[str, Any]:
    """The output on ``stream`` from byte ``after`` to what is stored so far, read page by page: the last page's
    view with ``data_base64`` of them all."""
    data = bytearray()
    while True:
        path = f"/v1/tasks/{task_id}/output"
        out: dict[str, Any] = await services.get("scheduler", path, stream=stream, after=after + len(data))
        page = base64.b64decode(out["data_base64"])
        data += page
        if not page or out.get("done", True) or out.get("next_offset") != after + len(data):
            return {**out, "offset": after, "data_base64": base64.b64encode(bytes(data)).decode()}


async def _usage(c: Ctx, view: dict[str, Any]) -> dict[str, Any]:
    agent = await c.services.get("lifecycle", f"/v1/agents/{view['agent_id']}")
    return task_usage(view, agent, await host_of(c.services))


def _fragment(c: Ctx, name: str, **values: Any) -> str:
    values.update(can_change=c.session.can_change, csrf=c.session.csrf)
    return templates.env.get_template(name).render(**values)


async def _follow_feed(c: Ctx, task_id: str, wake: asyncio.Queue[str | None]) -> None:
    """Put the type of each verified event of this task on ``wake`` ("open" first; None when the feed ends)."""
    try:
        async for line in c.services.stream_lines("audit", "/v1/audit/stream"):
            if line.startswith(b":"):
                wake.put_nowait("open")  # the feed's greeting: from here on no verified event is missed
            elif line.startswith(b"data: "):
                item = json.loads(line[6:])
                if item.get("aggregate_id") == task_id and item.get("aggregate_type") in ("task", "execution"):
                    wake.put_nowait(str(item.get("event_type")))
            elif line.startswith(b"event: overflow"):
                break
    except (ServiceCallFailed, ValueError):
        pass  # refused, unreachable or not the feed's format: the stream reports that the feed ended
    finally:
        wake.put_nowait(None)


@router.get("/tasks/{task_id}/stream")
async def stream(task_id: str, c: CtxDep) -> StreamingResponse:
    """The task's new output and status as Server-Sent Events (``output``, ``status``, ``charts``, ``done``)."""
    path_id(task_id, "task")

    async def body() -> AsyncGenerator[bytes, None]:
        wake: asyncio.Queue[str | None] = asyncio.Queue()
        follower = asyncio.create_task(_follow_feed(c, task_id, wake))
        try:
            try:
                opened = await asyncio.wait_for(wake.get(), OPEN_S)
            except TimeoutError:
                opened = None
            if opened != "open":
                yield sse("failed", "the audit service's live feed is not available; reload the page")
                return
            offsets = dict.fromkeys(STREAMS, 0)
            decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in STREAMS}
            shown, woke_by = "", "open"
            while True:
                view = await c.services.get("scheduler", f"/v1/tasks/{task_id}")
                settle = asyncio.get_running_loop().time() + SETTLE_S
                while woke_by in ("task.completed", "task.cancelled") and view.get("status") not in FINISHED:
                    if asyncio.get_running_loop().time() > settle:  # the scheduler has not applied it yet
                        break
                    await asyncio.sleep(0.2)
                    view = await c.services.get("scheduler", f"/v1/tasks/{task_id}")
                finished = view.get("status") in FINISHED
                for name in STREAMS:
                    out = await _output(c.services, task_id, name, offsets[name])
                    data = base64.b64decode(out["data_base64"])
                    if data or (finished and offsets[name] == 0):
                        text = decoders[name].decode(data, final=finished)
                        yield sse("output", {"stream": name, "offset": offsets[name], "text": text})
                    offsets[name] = out["next_offset"]
                status = _fragment(c, "task_status.html", task=view, finished=finished)
                if status != shown:
                    yield sse("status", status)
                    shown = status
                if finished:
                    yield sse("charts", _fragment(c, "task_charts.html", usage=await _usage(c, view)))
                    yield sse("done", view.get("status"))
                    return
                woke_by = await wake.get() or ""
                if not woke_by:
                    yield sse("failed", "the audit service's live feed ended; reload the page")
                    return
        except ServiceCallFailed as exc:
            yield sse("failed", str(exc))
        finally:
            follower.cancel()

    # Ends with the session (logout, expiry): nothing more is read or sent once the operator is logged out.
    return StreamingResponse(c.live(body()), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: str, c: CtxDep, csrf: Annotated[str, Form()] = "") -> Response:
    c.change(csrf)
    path_id(task_id, "task")
    await c.services.post(
        "scheduler", f"/v1/tasks/{task_id}/cancel", {"reason": f"cancelled in the console by {c.session.claims.sub}"}
    )
    return RedirectResponse(f"/tasks/{task_id}", status_code=303)
