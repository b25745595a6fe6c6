"""The OpenAPI document states what the APIs really answer: msgspec bodies, query parameters read by hand, and
the typed error body for every 4xx/5xx (not FastAPI's own validation error, which these APIs never send)."""

from __future__ import annotations

import msgspec
from fastapi import FastAPI, Request
from symbi_common import openapi


class Thing(msgspec.Struct):
    name: str


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/things/{thing_id}", openapi_extra={**openapi.json_body(Thing), **openapi.query_params(n=openapi.INT64)})
    async def post(thing_id: str, request: Request) -> dict[str, str]:
        return {"id": thing_id}

    openapi.install(app)
    return app


def test_every_operation_documents_the_typed_error_and_not_fastapis() -> None:
    doc = _app().openapi()
    operation = doc["paths"]["/things/{thing_id}"]["post"]
    assert "422" not in operation["responses"]
    for status in ("4XX", "5XX"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message", "details"}
    assert schemas["Thing"]["required"] == ["name"]


def test_query_parameters_read_by_hand_are_documented() -> None:
    operation = _app().openapi()["paths"]["/things/{thing_id}"]["post"]
    names = {(p["name"], p["in"]) for p in operation["parameters"]}
    assert names == {("thing_id", "path"), ("n", "query")}
    (n,) = [p for p in operation["parameters"] if p["name"] == "n"]
    assert n["schema"] == {"type": "integer", "format": "int64"}
    assert n["required"] is False
