"""Syntax errors as diagnostics a person can act on, and the rest of the file after a broken top-level item, to be
parsed again (every broken item gets its own diagnostic)."""

from __future__ import annotations

import re

import lark

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Reporter
from symbi_dsl.grammar import lark_parser

_TOP_LEVEL_RE = re.compile(r"^(metadata|agent|policy|type|function|schedule|memory|webhook|channel)\b", re.M)

#: Readable names of the grammar's terminals, for "expected …" messages.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "QUANTITY": "a duration or size",
    "SECRET": "a vault:// reference",
    "CMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*', '/' or '%'",
    "UNARY_OP": "'!' or '-'",
    "OR_OP": "'||'",
    "AND_OP": "'&&'",
    "$END": "the end of the file",
    "TYPE_OPEN": "a type literal",
}


_EXPR_START = {
    "NAME",
    "NUMBER",
    "STRING",
    "QUANTITY",
    "SECRET",
    "LSQB",
    "LBRACE",
    "LPAR",
    "UNARY_OP",
    "NOT",
    "MATCH",
    "IF",
    "TYPE_OPEN",
}
#: Continuations too rare to suggest: compound assignments (``x += 1`` is not what a broken file misses).
_NOT_SUGGESTED = frozenset(("+=", "-=", "*=", "/=", "%="))


def _expected(names: set[str] | frozenset[str]) -> str:
    parser = lark_parser()
    readable: set[str] = set()
    if {"NAME", "NUMBER", "STRING"} <= set(names):
        readable.add("an expression")
        names = set(names) - _EXPR_START - {"TRUE", "FALSE", "NULL"}
    for name in names:
        if name in _TERMINAL_NAMES:
            readable.add(_TERMINAL_NAMES[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            readable.add(name.lower())
            continue
        if pattern.type == "str" and pattern.value in _NOT_SUGGESTED:
            continue
        readable.add(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    return ", ".join(sorted(readable))


def report_syntax_error(reporter: Reporter, err: lark.exceptions.UnexpectedInput) -> None:
    line, column = getattr(err, "line", 0) or 0, getattr(err, "column", 0) or 0
    if line <= 0:  # lark reports -1 at the end of input
        lines = reporter.lines
        line = lines.count()
        column = lines.length(line) + 1
    span = A.Span(line, column, line, column + 1)
    if isinstance(err, lark.exceptions.UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            reporter.error(
                "syntax",
                f"the file ends early; expected {_expected(err.expected)}",
                span,
                "a block or bracket is not closed: check that every '{', '(' and '[' has its partner",
            )
            return
        text = str(tok)
        span = A.Span(line, column, line, column + max(1, len(text)))
        hint = _hint_for(text, err.expected)
        reporter.error("syntax", f"unexpected {text!r}; expected {_expected(err.expected)}", span, hint)
    elif isinstance(err, lark.exceptions.UnexpectedCharacters):
        ch = err.char if isinstance(err.char, str) and err.char else "?"  # the text parsed is not the source
        hint = "strings are written in double quotes" if ch in "'`" else "remove it, or put it inside a string"
        reporter.error("syntax", f"unexpected character {ch!r}", span, hint)
    else:
        reporter.error("syntax", str(err).splitlines()[0], span)


def _hint_for(text: str, expected: set[str] | frozenset[str]) -> str:
    if "COLON" in expected and text == "=":
        return "this block separates keys and values with ':'"
    if "EQUAL" in expected and text == ":":
        return "write 'key = value' here"
    if "RBRACE" in expected or "RSQB" in expected or "RPAR" in expected:
        return "a separator (',') or a closing bracket may be missing before this"
    if text in {"agent", "policy", "schedule", "type", "function", "memory", "webhook", "channel", "metadata"}:
        return f"'{text}' starts a new declaration; the one before it is probably not closed"
    return "check the syntax around here against the examples in examples/agents/"


def item_bounds(source: str, line: int) -> tuple[int, int]:
    """Character offsets of the top-level item containing ``line`` (declarations start at column 1)."""
    starts = [m.start() for m in _TOP_LEVEL_RE.finditer(source)]
    offset = 0
    for _ in range(line - 1):
        nl = source.find("\n", offset)
        offset = len(source) if nl < 0 else nl + 1
    begin = max((s for s in starts if s <= offset), default=0)
    end = min((s for s in starts if s > offset), default=len(source))
    return begin, end


def rest_after(source: str, end: int) -> str:
    """``source`` from offset ``end`` (the start of a line), after as many empty lines as came before it, so line
    and column numbers stay those of ``source``. What came before ``end`` had parsed, up to a broken item."""
    return "\n" * source.count("\n", 0, end) + source[end:]
