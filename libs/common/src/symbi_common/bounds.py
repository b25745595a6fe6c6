"""Values from outside fit what Symbi stores: integers 64-bit signed (msgpack event payloads, PostgreSQL
``bigint``), JSON nested no deeper than a caller's limit.

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
#: The containers of a JSON value as Python holds it (decoded, or built by a caller).
_CONTAINERS = (dict, list, tuple)
#: The longest text a query parameter may carry (ids, names, cursors, filters).
QUERY_TEXT_CHARS = 1024


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


def query_text(raw: str | None, field: str, max_chars: int = QUERY_TEXT_CHARS) -> str | None:
    """A text query parameter (None when absent or empty) that PostgreSQL can store and compare: no NUL
    character (``text`` refuses it) and at most ``max_chars`` characters; :class:`BadRequest` naming it otherwise."""
    if not raw:
        return None
    if "\x00" in raw:
        raise BadRequest(f"{field}: must not contain a NUL character", field=field)
    if len(raw) > max_chars:
        raise BadRequest(f"{field}: {len(raw)} characters, at most {max_chars}", field=field)
    return raw


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


def check_no_nul(value: Any, field: str = "") -> None:
    """No string inside a decoded body (structs, mappings and their keys, sequences) holds a NUL character,
    which PostgreSQL's ``text`` and ``jsonb`` refuse: for bodies that end up in a read model. Raises
    :class:`BadRequest` naming the first offending path."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"{field or '(body)'}: must not contain a NUL character", field=field or "(body)")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            check_no_nul(getattr(value, name), f"{field}.{name}" if field else name)
    elif isinstance(value, dict):
        for k, v in value.items():
            path = f"{field}.{k}" if field else str(k)
            check_no_nul(k, path)
            check_no_nul(v, path)
    elif isinstance(value, list | tuple | set | frozenset):
        for i, v in enumerate(value):
            check_no_nul(v, f"{field}[{i}]")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (JSON: dicts, lists and tuples are its containers, ``value`` itself the first) nests
    more than ``limit`` containers deep; level by level, without recursion, so a value of any depth is measured
    (where encoding, decoding or printing it would run out of stack)."""
    level: list[Any] = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below.extend(v for v in items if isinstance(v, _CONTAINERS))
        level = below
    return False


def json_nests_deeper_than(text: bytes, limit: int) -> bool:
    """Whether JSON ``text`` nests containers more than ``limit`` deep, or so deep that it does not decode here
    (``RecursionError``). Text that is not JSON is not deep (its own decode says what is wrong); counting the
    brackets first spares the decode of a text that cannot be that deep."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    try:
        value = msgspec.json.decode(text)
    except RecursionError:
        return True
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    return nested_deeper_than(value, limit)


#: Deepest nesting of lists and objects a request body of the services' APIs may have.
MAX_JSON_DEPTH = 64


def check_json_depth(body: bytes) -> bytes:
    """``body``, or :class:`BadRequest` if it nests lists or objects more than :data:`MAX_JSON_DEPTH` deep:
    decoding, checking or deciding on such a body would recurse past the stack (an untyped 500)."""
    if json_nests_deeper_than(body, MAX_JSON_DEPTH):
        raise BadRequest(
            f"the request body nests lists or objects more than {MAX_JSON_DEPTH} levels deep", field="(body)"
        )
    return body
