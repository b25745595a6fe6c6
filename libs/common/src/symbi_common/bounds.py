"""Integers from outside fit what Symbi stores: 64-bit signed (msgpack event payloads, PostgreSQL ``bigint``).

JSON and query strings carry integers of any size, and Python takes them; the first store or encoder that
meets one past 64 bits would fail deep inside a request with an internal error. The APIs check at the edge
instead and answer with a :class:`~symbi_common.errors.BadRequest` naming the field.
"""

from __future__ import annotations

from typing import Any

import msgspec

from symbi_common.errors import BadRequest

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def int64(value: int, field: str) -> int:
    """``value`` if it is a 64-bit signed integer; :class:`BadRequest` naming ``field`` otherwise."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadRequest(f"{field}: {value} is out of range (at most {INT64_MAX} in magnitude)", field=field)
    return value


def parse_int(raw: str, field: str) -> int:
    """A query or path parameter as a 64-bit integer (ASCII digits with an optional sign)."""
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 30:
        raise BadRequest(f"{field}: expected an integer, got {raw!r}", field=field)
    return int64(int(text), field)


def check_ints(value: Any, field: str = "") -> None:
    """Every integer inside a decoded body (structs, mappings, sequences) is 64-bit; raises naming its path."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        int64(value, field or "(body)")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            check_ints(getattr(value, name), f"{field}.{name}" if field else name)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_ints(v, f"{field}.{k}" if field else str(k))
    elif isinstance(value, list | tuple | set | frozenset):
        for i, v in enumerate(value):
            check_ints(v, f"{field}[{i}]")
