"""A tool definition in canonical form and its SHA-256 pin. Pure.

The definition is what the model reads and what the call is checked against: name, description, input and
output schema, annotations (and title). Server-private ``_meta`` (where the SchemaPin signature travels) is
left out. Canonical JSON: keys sorted, no insignificant whitespace, UTF-8, no NaN. Any change of any of these
fields, one character of a description included, changes the pin.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: The fields of an MCP ``Tool`` that make up its definition (wire names).
DEFINITION_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
PIN_PREFIX = "sha256:"


def definition_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The definition fields of an MCP tool as listed (a ``tools/list`` entry in wire form); absent and null
    fields are left out, so a server that sends ``"title": null`` pins like one that omits it."""
    return {k: tool[k] for k in DEFINITION_FIELDS if tool.get(k) is not None}


def canonical_json(value: Any) -> bytes:
    """Canonical JSON bytes; raises ``ValueError`` for what JSON cannot carry (NaN, infinities)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def pin_of(definition: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical definition."""
    return PIN_PREFIX + hashlib.sha256(canonical_json(definition)).hexdigest()


def digest_of(value: Any) -> str:
    """``sha256:<hex>`` of any JSON value (a call's result, for the audit record)."""
    return PIN_PREFIX + hashlib.sha256(canonical_json(value)).hexdigest()
