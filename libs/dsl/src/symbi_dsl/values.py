"""Typed reads of a definition's values and entries; a wrong one is reported with its position.

The checks of :mod:`symbi_dsl.declarations`, :mod:`symbi_dsl.blocks`, :mod:`symbi_dsl.agents` and the agent's
per-key parsers read every value through these, so a problem is worded the same way wherever it is found.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from symbi_common.errors import ValidationError
from symbi_common.secret_records import check_name

from symbi_dsl import ast as A
from symbi_dsl.cedar import dotted
from symbi_dsl.diagnostics import Reporter


@dataclass
class Values:
    """Typed reads of expressions; a wrong type is reported (with position) and read as None."""

    rep: Reporter

    def _bad(self, node: A.Expr | A.Entry, what: str, hint: str = "") -> None:
        self.rep.error("type", f"expected {what}", getattr(node, "span", None), hint)

    def string(self, e: A.Expr, what: str = "a string") -> str | None:
        if isinstance(e, A.Literal_) and e.kind == "string":
            return str(e.value)
        self._bad(e, what, "strings are written in double quotes")
        return None

    def word(self, e: A.Expr, choices: Sequence[str], what: str) -> str | None:
        """A name or string from ``choices`` (``tier2`` or ``"tier2"``)."""
        value = e.id if isinstance(e, A.Name) else e.value if isinstance(e, A.Literal_) and e.kind == "string" else None
        if isinstance(value, str) and value in choices:
            return value
        self.rep.error(
            "value", f"{what} must be one of {', '.join(choices)}", e.span, did_you_mean(str(value or ""), choices)
        )
        return None

    def boolean(self, e: A.Expr) -> bool | None:
        if isinstance(e, A.Literal_) and e.kind == "bool":
            return bool(e.value)
        self._bad(e, "true or false")
        return None

    def number(self, e: A.Expr, bounds: tuple[float, float], unit: str) -> float | None:
        if isinstance(e, A.Literal_) and e.kind in ("int", "float"):
            value = float(e.value)  # type: ignore[arg-type]
            lo, hi = bounds
            if not lo <= value <= hi:
                self.rep.error("range", f"must be between {lo:g} and {hi:g} {unit}, got {value:g}", e.span)
                return None
            return value
        self._bad(e, f"a number ({unit})")
        return None

    def duration(self, e: A.Expr, bounds: tuple[float, float]) -> float | None:
        if isinstance(e, A.Quantity) and e.kind == "duration":
            lo, hi = bounds
            if not lo <= e.value <= hi:
                self.rep.error(
                    "range",
                    f"{e.text} is out of range: must be between {_human_s(lo)} and {_human_s(hi)}",
                    e.span,
                )
                return None
            return e.value
        self._bad(e, "a duration like 30s, 5m, 2h or 5.minutes")
        return None

    def size(self, e: A.Expr, bounds: tuple[float, float]) -> float | None:
        if isinstance(e, A.Quantity) and e.kind == "size":
            lo, hi = bounds
            if not lo <= e.value <= hi:
                self.rep.error(
                    "range", f"{e.text} is out of range: must be between {_human_b(lo)} and {_human_b(hi)}", e.span
                )
                return None
            return e.value
        self._bad(e, "a size like 512MB or 2GiB")
        return None

    def strings(self, e: A.Expr, *, names_ok: bool = False) -> list[tuple[str, A.Expr]]:
        """A list of strings (dotted names too, where ``names_ok``) with their nodes."""
        if not isinstance(e, A.Array):
            self._bad(e, "a list [ … ]")
            return []
        out: list[tuple[str, A.Expr]] = []
        for item in e.items:
            text = dotted(item) if names_ok and isinstance(item, A.Name | A.Member) else None
            if text is None:
                text = self.string(item)
            if text is not None:
                out.append((text, item))
        return out

    def secret(self, e: A.Expr) -> str | None:
        """A ``vault://`` reference, its path a name the secrets store can hold (docs/secrets.md)."""
        if isinstance(e, A.Secret):
            try:
                check_name(e.path)
            except ValidationError:
                hint = "lower-case segments of letters, digits, '_', '-', '.' joined by '/'"
                self.rep.error("value", f"vault://{e.path} names no secret the store can hold", e.span, hint)
                return None
            return f"vault://{e.path}"
        self._bad(e, "a secret reference like vault://path/to/secret", "secrets are never written as plain values")
        return None


def _human_s(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _human_b(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}B"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def keyed_entries(
    rep: Reporter,
    entries: Sequence[A.Entry | A.Policy],
    allowed: Sequence[str],
    where: str,
    nested: Sequence[str] = (),
    *,
    lenient: bool = False,
    either: Sequence[str] = (),
) -> dict[str, A.Entry]:
    """The entries by key; unknown (a warning where ``lenient``), duplicate and wrongly nested keys are reported
    (a key in ``either`` may be a value or a block)."""
    out: dict[str, A.Entry] = {}
    for entry in entries:
        if not isinstance(entry, A.Entry):
            continue
        if entry.key not in allowed:
            hint = did_you_mean(entry.key, allowed) or f"known keys: {', '.join(allowed)}"
            if lenient:
                rep.warn("unknown_key", f"unknown key {entry.key!r} in {where} is ignored", key_span(entry), hint)
            else:
                rep.error("unknown_key", f"unknown key {entry.key!r} in {where}", key_span(entry), hint)
            continue
        if entry.key in out:
            rep.error("duplicate", f"{entry.key!r} is set twice in {where}", key_span(entry), "remove one of them")
            continue
        if entry.key in either:
            out[entry.key] = entry
            continue
        if isinstance(entry.value, tuple) and entry.key not in nested:
            rep.error("type", f"{entry.key!r} takes a value, not a block", key_span(entry), f"write {entry.key}: …")
            continue
        if not isinstance(entry.value, tuple) and entry.key in nested:
            rep.error("type", f"{entry.key!r} is a block", key_span(entry), f"write {entry.key} {{ … }}")
            continue
        out[entry.key] = entry
    return out


def key_span(entry: A.Entry) -> A.Span:
    s = entry.span
    return A.Span(s.line, s.column, s.line, s.column + len(entry.key))


def value_of(entry: A.Entry) -> A.Expr:
    assert not isinstance(entry.value, tuple)
    return entry.value


def require_keys(rep: Reporter, got: dict[str, A.Entry], keys: Sequence[str], where: str, span: A.Span) -> None:
    for key in keys:
        if key not in got:
            rep.error("missing", f"{where} needs {key!r}", span, f"add {key}: …")


def to_json(e: A.Expr) -> Any:
    """A literal expression (strings, numbers, booleans, arrays, records) as JSON data; None if it is not one."""
    match e:
        case A.Literal_():
            return e.value
        case A.Quantity():
            return e.text
        case A.Array():
            return [to_json(i) for i in e.items]
        case A.Record():
            return {k: to_json(v) for k, v in e.fields}
    raise ValueError("not a literal")


def name_span(node: Any) -> A.Span:
    """Where a declaration's name is (its first character when the parser did not record the name)."""
    named: A.Span = getattr(node, "name_span", A.NO_SPAN)
    if named.line:
        return named
    s = node.span
    return A.Span(s.line, s.column, s.line, s.column + 1)
