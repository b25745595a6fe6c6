"""The operators and the fixed set of methods an agent body may use on its values (lists, strings, records).

Nothing else of a value is reachable from a body: no attributes, no Python methods beyond these.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from symbi_dsl.interpreter import DslRuntimeError, Interpreter

Error = Callable[[str], "DslRuntimeError"]
MAX_TEXT = 10_000_000  # characters a string or list built by the body may have


def truthy(value: Any) -> bool:
    """Conditions: false, null, 0, "", [] and {} are false."""
    return bool(value)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def arithmetic(op: str, a: Any, b: Any, error: Error) -> Any:
    """``+ - * / %`` on numbers; ``+`` also joins two strings or two lists (never a string and a number)."""
    if op == "+" and type(a) is type(b) and isinstance(a, str | list):
        joined = a + b
        if len(joined) > MAX_TEXT:
            raise error("the value grows too large")
        return joined
    if not (_number(a) and _number(b)):
        raise error(f"cannot apply {op} to {_name(a)} and {_name(b)}")
    if op in ("/", "%") and b == 0:
        raise error("division by zero")
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b if isinstance(a, float) or isinstance(b, float) or a % b else a // b
    return a % b


def compare(op: str, a: Any, b: Any, error: Error) -> bool:
    """``== !=`` on anything; ``< <= > >=`` on two numbers or two strings; ``in`` on lists, strings, records."""
    if op == "==":
        return bool(a == b and (type(a) is type(b) or (_number(a) and _number(b))))
    if op == "!=":
        return not compare("==", a, b, error)
    if op == "in":
        if (isinstance(b, str) and isinstance(a, str)) or isinstance(b, list | dict):
            return bool(a in b)
        raise error(f"cannot look for a value in {_name(b)}")
    if (_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str)):
        return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])
    raise error(f"cannot compare {_name(a)} and {_name(b)} with {op}")


def _name(value: Any) -> str:
    return (
        "null"
        if value is None
        else {str: "a string", list: "a list", dict: "a record", bool: "a boolean"}.get(
            type(value), "a number" if _number(value) else type(value).__name__
        )
    )


def _push(_: Interpreter, items: list[Any], value: Any) -> None:
    if len(items) >= MAX_TEXT:
        raise ValueError("the list grows too large")
    items.append(value)


def _filter(it: Interpreter, items: list[Any], fn: Any) -> list[Any]:
    return [x for x in items if truthy(it.call(fn, [x]))]


def _map(it: Interpreter, items: list[Any], fn: Any) -> list[Any]:
    return [it.call(fn, [x]) for x in items]


def _join(_: Interpreter, items: list[Any], sep: str = "") -> str:
    return sep.join(x if isinstance(x, str) else json.dumps(x) for x in items)


METHODS: dict[type, dict[str, Callable[..., Any]]] = {
    list: {
        "len": lambda _, xs: len(xs),
        "length": lambda _, xs: len(xs),
        "is_empty": lambda _, xs: not xs,
        "contains": lambda _, xs, x: x in xs,
        "push": _push,
        "filter": _filter,
        "map": _map,
        "join": _join,
        "first": lambda _, xs: xs[0] if xs else None,
        "last": lambda _, xs: xs[-1] if xs else None,
    },
    str: {
        "len": lambda _, s: len(s),
        "length": lambda _, s: len(s),
        "is_empty": lambda _, s: not s,
        "contains": lambda _, s, x: str(x) in s,
        "starts_with": lambda _, s, x: s.startswith(x),
        "ends_with": lambda _, s, x: s.endswith(x),
        "split": lambda _, s, sep: s.split(sep),
        "trim": lambda _, s: s.strip(),
        "to_upper": lambda _, s: s.upper(),
        "to_lower": lambda _, s: s.lower(),
    },
    dict: {
        "keys": lambda _, d: list(d),
        "values": lambda _, d: list(d.values()),
        "len": lambda _, d: len(d),
        "contains": lambda _, d, k: k in d,
        "is_empty": lambda _, d: not d,
    },
}
