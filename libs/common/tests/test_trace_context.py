"""A request's trace while no span is exported: the caller's, else a new one; FastAPI's server span only while
spans are exported (here: inside ``capture_spans``)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from symbi_common.service_app import TraceContext, _untraced
from symbi_common.telemetry import capture_spans, inject_trace

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _app(carried: list[str]) -> FastAPI:
    telemetry = {"tracing": True, "metrics": False, "logs": False, "operation_spans": False, "exclude": _untraced}
    app = FastAPI(telemetry=telemetry)  # type: ignore[arg-type]
    app.add_middleware(TraceContext)

    @app.get("/v1/work")
    async def work() -> dict[str, str]:
        carried.append(inject_trace({}).get("traceparent", ""))  # what an event appended here would carry
        return {}

    return app


async def test_without_an_exporter_a_request_continues_the_callers_trace_or_starts_one() -> None:
    carried: list[str] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(carried)), base_url="http://svc") as http:
        assert (await http.get("/v1/work", headers={"traceparent": CALLER})).status_code == 200
        assert (await http.get("/v1/work")).status_code == 200
        assert (await http.get("/v1/work")).status_code == 200
    continued, new, other = (c.split("-") for c in carried)
    assert continued[1] == "0af7651916cd43dd8448eb211c80319c"
    assert len(new[1]) == 32
    assert int(new[1], 16) != 0
    assert new[1] != other[1]  # a trace of its own per request
    assert new[1] != continued[1]


async def test_while_spans_are_exported_the_request_is_fastapis_server_span() -> None:
    carried: list[str] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(carried)), base_url="http://svc") as http:
        with capture_spans() as spans:
            assert (await http.get("/v1/work", headers={"traceparent": CALLER})).status_code == 200
            assert (await http.get("/healthz")).status_code == 404  # untraced path: no span either way
    [server] = [s for s in spans if s.name == "GET /v1/work"]
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert carried[0].split("-")[2] == format(server.context.span_id, "016x")  # events hang under the span
