"""OpenAPI documentation for endpoints whose bodies are msgspec Structs.

Services decode request bodies with msgspec (fast, precise errors naming the field) rather than
FastAPI's pydantic models, so the schemas are generated here from the Structs and merged into the
app's OpenAPI document: ``/docs`` shows every request and response body.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI

_REF = "#/components/schemas/{name}"
_components: dict[str, Any] = {}


def _schema(type_: Any) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components([type_], ref_template=_REF)
    _components.update(components)
    return dict(schema)


def json_body(type_: Any) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body of ``type_``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema(type_)}}}}


def json_response(type_: Any, description: str = "OK") -> dict[str, Any]:
    """A ``responses`` entry documenting a JSON response body of ``type_``."""
    return {"description": description, "content": {"application/json": {"schema": _schema(type_)}}}


class ErrorDetail(msgspec.Struct, frozen=True):
    """A typed error: ``code`` names its class (``not_found``, ``validation_error`` …), ``details`` its attributes."""

    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error answer of every service's API."""

    error: ErrorDetail


#: Schemas of query parameters, for :func:`query_params`.
INT64: dict[str, Any] = {"type": "integer", "format": "int64"}
TEXT: dict[str, Any] = {"type": "string"}
FLAG: dict[str, Any] = {"type": "boolean"}
TIME: dict[str, Any] = {"type": "string", "format": "date-time"}


def query_params(**params: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` documenting optional query parameters read by hand: ``query_params(limit={"type":
    "integer"})``. The handlers parse them (``symbi_common.bounds``), so FastAPI does not validate them."""
    return {"parameters": [{"name": n, "in": "query", "required": False, "schema": s} for n, s in params.items()]}


def _document_errors(doc: dict[str, Any]) -> None:
    """Every operation may answer a typed error (4xx, 5xx): say so, and replace FastAPI's 422 (its own
    validation error, which these APIs never send: they decode bodies with msgspec) by the typed error."""
    error = json_response(ErrorBody, "A typed error")
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses.setdefault("4XX", error)
                responses.setdefault("5XX", error)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def install(app: FastAPI) -> None:
    """Merge the msgspec schemas into ``app``'s OpenAPI document and document the typed error answers."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = default()
        _document_errors(doc)
        doc.setdefault("components", {}).setdefault("schemas", {}).update(_components)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
