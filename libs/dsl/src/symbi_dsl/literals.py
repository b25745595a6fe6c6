"""The values of literal tokens: string escapes, durations (to seconds) and sizes (to bytes)."""

from __future__ import annotations

import re

from symbi_dsl import ast as A

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 365 * 86400.0,
    "month": 30 * 86400.0,
    "millisecond": 0.001,
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 604800.0,
}
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_QUANTITY_RE = re.compile(r"^(\d+(?:\.\d+)?)\.?([A-Za-z]+)\Z")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "0": "\0"}


def unescape(text: str) -> str:
    """The value of a string literal (without its quotes): ``\\n \\t \\r \\0 \\" \\\\ \\uXXXX``; others keep their character."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            code = text[i + 2 : i + 6]
            if nxt == "u" and len(code) == 4 and all(c in "0123456789abcdefABCDEF" for c in code):
                out.append(chr(int(code, 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def quantity(text: str) -> A.Quantity:
    """``30s`` / ``5.minutes`` → seconds, ``512MB`` → bytes."""
    m = _QUANTITY_RE.match(text)
    assert m is not None, text  # the lexer only produces matching tokens
    amount, unit = float(m.group(1)), m.group(2)
    if unit in _SIZE_UNITS:
        return A.Quantity(text, "size", amount * _SIZE_UNITS[unit])
    return A.Quantity(text, "duration", amount * _DURATION_UNITS[unit.rstrip("s") if len(unit) > 2 else unit])
