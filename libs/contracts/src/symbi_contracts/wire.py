"""Decoding a JSON body into a contract type, with a :class:`~symbi_common.errors.BadRequest` that names the field.

Every service's HTTP API and command handlers decode request bodies the same way: malformed JSON or a
wrong type is refused, and the error's ``field`` detail is the dotted path of the offending value
(``resources.memory_mb``, ``network_access[2]``). Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from symbi_common.errors import BadRequest

T = TypeVar("T")

_AT_RE = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD_RE = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def join_path(prefix: str, name: str) -> str:
    """``config`` + ``name`` → ``config.name``; ``config`` + ``[2]`` → ``config[2]``."""
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def decode_error_field(exc: msgspec.ValidationError, prefix: str = "") -> tuple[str, str]:
    """The dotted path and the message of a msgspec validation error, e.g. ``("resources.memory_mb", …)``."""
    text = str(exc)
    m = _AT_RE.search(text)
    path = m.group(1) if m else ""
    message = text[: m.start()] if m else text
    named = _FIELD_RE.search(message)
    if named:
        path = join_path(path, named.group(1))
    return join_path(prefix, path) if path else (prefix or "(body)"), message


def decode_json(data: bytes, type_: type[T]) -> T:
    """Decode a request body; malformed JSON or a wrong type is a :class:`BadRequest` naming the field."""
    try:
        return msgspec.json.decode(data or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        field, message = decode_error_field(exc)
        raise BadRequest(f"{field}: {message}", field=field) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", field="(body)") from None
