"""Reading a task's output: in pages that fit a NATS reply, with a typed error for an offset past the end."""

from __future__ import annotations

import base64
from typing import Any

from nats.aio.client import Client as NatsClient
from schedkit import App, register_agent, until_status
from symbi_common.commands import CommandClient
from symbi_scheduler.projections import OUTPUT_PAGE_BYTES, OffsetPastEnd

BIG = 1_200_000  # bytes of stdout: more than one NATS message can carry as base64


def _big(data: bytes) -> bytes:
    return bytes(i % 251 for i in range(BIG))


async def test_a_large_output_is_read_in_pages_over_http_and_nats(
    lifecycle: App, start_scheduler: Any, hosts: Any, nc: NatsClient
) -> None:
    await register_agent(lifecycle, "worker")
    await hosts("h1", work=_big)
    client = CommandClient(nc, timeout=10.0)
    async with start_scheduler() as s:
        task_id = (await s.json("POST", "/v1/tasks", {"agent_id": "worker", "input": "x"}, status=201))["task_id"]
        await until_status(s, task_id, "completed")
        got, after, pages = b"", 0, 0
        while True:
            view = await s.json("GET", f"/v1/tasks/{task_id}/output?after={after}")
            data = base64.b64decode(view["data_base64"])
            assert len(data) <= OUTPUT_PAGE_BYTES
            got, after, pages = got + data, view["next_offset"], pages + 1
            assert view["done"] == (after == BIG)
            if view["done"]:
                break
        assert got == _big(b"")
        assert pages == -(-BIG // OUTPUT_PAGE_BYTES)
        assert view["intact"] is True
        assert view["total_bytes"] == BIG

        # Over NATS the same pages arrive (a whole 1.2 MB reply would exceed NATS's max payload).
        page = await client.call("scheduler", "output", {"task_id": task_id, "after": 100}, dict)
        assert base64.b64decode(page["data_base64"]) == got[100 : 100 + OUTPUT_PAGE_BYTES]
        small = await client.call("scheduler", "output", {"task_id": task_id, "max_bytes": 10}, dict)
        assert (small["next_offset"], small["done"]) == (10, False)

        r = await s.http.get(f"/v1/tasks/{task_id}/output?after={BIG + 1}")
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == OffsetPastEnd.code
        assert error["details"]["field"] == "after"
        assert f"{BIG} bytes so far" in error["message"]
        r = await s.http.get(f"/v1/tasks/{task_id}/output?max_bytes=0")
        assert r.status_code == 422
        assert r.json()["error"]["details"]["field"] == "max_bytes"
