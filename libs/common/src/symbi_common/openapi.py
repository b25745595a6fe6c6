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


def install(app: FastAPI) -> None:
    """Merge the msgspec schemas into ``app``'s OpenAPI document."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = default()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(_components)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
