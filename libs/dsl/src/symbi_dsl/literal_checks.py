"""Literals every later step can hold: checked once, over the whole tree, before anything reads them. Pure.

A number literal must fit a 64-bit integer (Cedar's ``Long``, the stored configuration) and be finite, and so
must a quantity in its seconds or bytes; a string must be text that can be stored (a ``\\uD800`` escape alone
is half of a UTF-16 pair, no character). Without this pass, ``network_io = 999…9`` or ``9999…9MB`` in a policy
reached a ``float`` or ``int`` conversion deep in the compiler as ``OverflowError``, and a lone surrogate
compiled and then could not be stored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from symbi_common.bounds import INT64_MAX, INT64_MIN

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Reporter


def check_literals(module: A.Module, rep: Reporter) -> None:
    """Report (code ``range`` / ``encoding``) every literal in ``module`` no later step could hold."""
    for node in _nodes(module):
        if isinstance(node, A.Literal_):
            _literal(node, rep)
        elif isinstance(node, A.Quantity) and not (math.isfinite(node.value) and abs(node.value) <= INT64_MAX):
            rep.error("range", f"{node.text[:40]} is too large", node.span, "write a smaller amount or a larger unit")


def _literal(node: A.Literal_, rep: Reporter) -> None:
    value = node.value
    if node.kind == "int" and isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        rep.error("range", f"{str(value)[:24]}… does not fit a 64-bit integer", node.span)
    elif node.kind == "float" and isinstance(value, float) and not math.isfinite(value):
        rep.error("range", "this number is too large", node.span)
    elif node.kind == "string" and isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            rep.error(
                "encoding",
                "the string holds a \\u escape of half of a UTF-16 pair (D800-DFFF), no character",
                node.span,
            )


def _nodes(node: Any) -> Iterator[Any]:
    """Every node under ``node`` (dataclasses, tuples and lists of them), ``node`` first."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            for f in dataclasses.fields(current):
                if f.name != "span":
                    stack.append(getattr(current, f.name))
        elif isinstance(current, tuple | list):
            stack.extend(current)
        elif isinstance(current, dict):
            stack.extend(current.values())
