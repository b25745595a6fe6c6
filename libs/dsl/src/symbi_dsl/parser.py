"""Text to syntax tree with lark (LALR, grammar in ``symbiont.lark``), and syntax errors as diagnostics.

The tree is built while lark parses (its inline transformer, :class:`_Build`): no parse tree, no position
propagation, which keeps a 1,000-line file under 100 ms. Keywords and braces are kept by the grammar
(``!`` rules) where they mark a node's start or end. A syntax error does not stop the search for others: the broken top-level item is blanked out
(keeping line numbers) and the file parsed again, so every broken item gets its own diagnostic.

Nothing but :class:`~symbi_dsl.diagnostics.DslError` leaves :func:`parse`, whatever the input.
"""

from __future__ import annotations

import re
import threading
from functools import cache
from importlib import resources
from typing import Any, cast

import lark
from lark import Token, v_args

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import DEFAULT_FILE, Diagnostic, DslError, Reporter

MAX_SOURCE_BYTES = 1_000_000
MAX_SYNTAX_ERRORS = 20

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
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
_QUANTITY_RE = re.compile(r"^(\d+(?:\.\d+)?)\.?([A-Za-z]+)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "0": "\0"}
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
}


#: Tokens that carry meaning; the others (keywords, braces, separators) only mark where nodes start and end.
_VALUE_TOKENS = frozenset(
    ("NAME", "STRING", "NUMBER", "QUANTITY", "SECRET", "CMP_OP", "ADD_OP", "MUL_OP", "UNARY_OP", "OR_OP", "AND_OP")
)


def _tspan(tok: Token) -> A.Span:
    return A.Span(
        tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0, tok.start_pos or 0, tok.end_pos or 0
    )


def _edge(x: Any, last: bool) -> A.Span | None:
    """The span of the first (or last) positioned thing in ``x``: a token, a node, or a tuple of them."""
    if x is None or (isinstance(x, str) and not isinstance(x, Token)):
        return None
    if isinstance(x, Token):
        return _tspan(x)
    if isinstance(x, tuple):
        own: A.Span | None = getattr(x, "span", None)
        if own is not None and own.line:
            return own
        for item in reversed(x) if last else x:
            found = _edge(item, last)
            if found is not None:
                return found
        return None
    span = getattr(x, "span", None)
    return span if span is not None and span.line else None


def _cover(children: tuple[Any, ...]) -> A.Span:
    """The span from the first to the last positioned child."""
    first, last = _edge(children, False), _edge(children, True)
    if first is None or last is None:
        return A.NO_SPAN
    return A.Span(first.line, first.column, last.end_line, last.end_column, first.start_pos, last.end_pos)


def _values(children: tuple[Any, ...]) -> list[Any]:
    """The children that carry meaning (keywords, braces and separators dropped; None placeholders kept)."""
    return [c for c in children if not isinstance(c, Token) or c.type in _VALUE_TOKENS]


class Body(tuple):  # type: ignore[type-arg]
    """A ``{ … }`` statement block: a tuple of statements that also knows its span (braces included)."""

    span: A.Span = A.NO_SPAN


def _body(stmts: Any, span: A.Span) -> Body:
    body = Body(stmts)
    body.span = span
    return body


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


@v_args(inline=True)
class _Build(lark.Transformer[Token, Any]):
    """Builds :mod:`symbi_dsl.ast` nodes while lark reduces (method names are the grammar's rules)."""

    # --- atoms
    def string(self, tok: Token) -> A.Literal_:
        return A.Literal_("string", unescape(tok[1:-1]), span=_tspan(tok))

    def number(self, tok: Token) -> A.Literal_:
        text = str(tok)
        if "." in text or "e" in text or "E" in text:
            return A.Literal_("float", float(text), span=_tspan(tok))
        return A.Literal_("int", int(text), span=_tspan(tok))

    def quantity(self, tok: Token) -> A.Quantity:
        q = quantity(str(tok))
        return A.Quantity(q.text, q.kind, q.value, span=_tspan(tok))

    def secret(self, tok: Token) -> A.Secret:
        return A.Secret(str(tok)[len("vault://") :], span=_tspan(tok))

    def bool_(self, tok: Token) -> A.Literal_:
        return A.Literal_("bool", tok == "true", span=_tspan(tok))

    def null(self, tok: Token) -> A.Literal_:
        return A.Literal_("null", None, span=_tspan(tok))

    def name(self, tok: Token) -> A.Name:
        return A.Name(str(tok), span=_tspan(tok))

    def array(self, *children: Any) -> A.Array:
        return A.Array(tuple(i for i in _values(children) if i is not None), span=_cover(children))

    def record_field(self, key: Token | A.Literal_, value: A.Expr) -> tuple[str, A.Expr]:
        return (_key(key), value)

    def record(self, *children: Any) -> A.Record:
        return A.Record(tuple(f for f in _values(children) if f is not None), span=_cover(children))

    # --- operators
    def binary(self, left: A.Expr, op: Token, right: A.Expr) -> A.Binary:
        return A.Binary(str(op), left, right, span=_cover((left, right)))

    def or_word(self, left: A.Expr, right: A.Expr) -> A.Binary:
        return A.Binary("||", left, right, span=_cover((left, right)))

    def and_word(self, left: A.Expr, right: A.Expr) -> A.Binary:
        return A.Binary("&&", left, right, span=_cover((left, right)))

    def in_word(self, left: A.Expr, right: A.Expr) -> A.Binary:
        return A.Binary("in", left, right, span=_cover((left, right)))

    def unary_op(self, op: Token, operand: A.Expr) -> A.Unary:
        return A.Unary("!" if op == "!" else "-", operand, span=_cover((op, operand)))

    def not_op(self, operand: A.Expr) -> A.Unary:
        return A.Unary("!", operand, span=_cover((operand,)))

    def call(self, func: A.Expr, args: tuple[A.Expr, ...]) -> A.Call:
        return A.Call(func, args, span=_cover((func, args)))

    def args(self, *items: A.Expr | None) -> tuple[A.Expr, ...]:
        return tuple(i for i in items if i is not None)

    def member(self, obj: A.Expr, name: Token) -> A.Member:
        return A.Member(obj, str(name), span=_cover((obj, name)))

    def index(self, obj: A.Expr, idx: A.Expr) -> A.Index:
        return A.Index(obj, idx, span=_cover((obj, idx)))

    def lambda_(self, param: Token, body: A.Expr) -> A.Lambda:
        return A.Lambda(str(param), body, span=_cover((param, body)))

    def arm(self, pattern: A.Literal_ | A.Name, body: A.Expr) -> A.Arm:
        return A.Arm(pattern, body, span=_cover((pattern, body)))

    def match_(self, *children: Any) -> A.Match:
        subject, *arms = _values(children)
        return A.Match(subject, tuple(arms), span=_cover(children))

    # --- types
    def optional(self, tok: Token | None = None) -> bool:
        return tok is not None

    def type_args(self, *types: A.TypeRef) -> tuple[A.TypeRef, ...]:
        return types

    def type(self, name: Token, args: tuple[A.TypeRef, ...] | None, optional: bool) -> A.TypeRef:
        return A.TypeRef(str(name), args or (), optional, span=_cover((name, args)))

    def list_type(self, inner: A.TypeRef, optional: bool) -> A.TypeRef:
        return A.TypeRef("List", (inner,), optional, span=inner.span)

    # --- statements
    def stmt_block(self, *children: Any) -> Body:
        return _body(_values(children), _cover(children))

    def let_stmt(self, *children: Any) -> A.Let:
        # "let" NAME (":" type | None None) "=" expr
        return A.Let(str(children[1]), children[3], children[5], span=_cover(children))

    def if_stmt(self, *children: Any) -> A.If:
        # "if" expr block ("else" (if | block) | None None)
        return A.If(children[1], children[2], children[4], span=_cover(children))

    def for_stmt(self, *children: Any) -> A.For:
        var, iterable, body = _values(children)
        return A.For(str(var), iterable, body, span=_cover(children))

    def try_stmt(self, *children: Any) -> A.Try:
        body, name, handler = _values(children)
        return A.Try(body, str(name) if name is not None else None, handler, span=_cover(children))

    def return_stmt(self, *children: Any) -> A.Return:
        (value,) = _values(children)
        return A.Return(value, span=_cover(children))

    def expr_stmt(self, expr: A.Expr) -> A.ExprStmt:
        return A.ExprStmt(expr, span=_cover((expr,)))

    # --- declarations
    def entry(self, key: Token | A.Literal_, value: A.Expr) -> A.Entry:
        return A.Entry(_key(key), value, span=_cover((key, value)))

    def nested_entry(self, *children: Any) -> A.Entry:
        key, entries = _values(children)
        return A.Entry(_key(key), entries, span=_cover(children))

    def entries(self, *entries: A.Entry) -> tuple[A.Entry, ...]:
        return entries

    def metadata(self, *children: Any) -> A.Metadata:
        (entries,) = _values(children)
        return A.Metadata(entries, span=_cover(children))

    def key_word(self, tok: Token) -> Token:
        return Token("NAME", str(tok), tok.start_pos, tok.line, tok.column, tok.end_line, tok.end_column, tok.end_pos)

    def block_kind(self, tok: Token) -> Token:
        return Token("NAME", str(tok), tok.start_pos, tok.line, tok.column, tok.end_line, tok.end_column, tok.end_pos)

    def block(self, *children: Any) -> A.Block:
        kind, name, entries = _values(children)
        return A.Block(
            str(kind),  # type: ignore[arg-type]
            str(name),
            entries,
            name_span=_tspan(name),
            span=_cover(children),
        )

    def param(self, name: Token, type_: A.TypeRef, default: A.Expr | None) -> A.Param:
        return A.Param(str(name), type_, default, span=_cover((name, type_, default)))

    def params(self, *params: A.Param | None) -> tuple[A.Param, ...]:
        return tuple(p for p in params if p is not None)

    def returns(self, type_: A.TypeRef | None) -> A.TypeRef | None:
        return type_

    def rule_kind(self, tok: Token) -> Token:
        return Token("NAME", str(tok), tok.start_pos, tok.line, tok.column, tok.end_line, tok.end_column, tok.end_pos)

    def rule(self, kind: Token, action: A.Expr, condition: A.Expr | None) -> A.Rule:
        return A.Rule(str(kind), action, condition, span=_cover((kind, action, condition)))  # type: ignore[arg-type]

    def policy(self, *children: Any) -> A.Policy:
        name, *rules = _values(children)
        return A.Policy(str(name), tuple(rules), name_span=_tspan(name), span=_cover(children))

    def with_arg(self, key: Token, value: A.Expr) -> A.Entry:
        return A.Entry(str(key), value, span=_cover((key, value)))

    def with_args(self, *args: A.Entry) -> tuple[A.Entry, ...]:
        return args

    def with_block(self, *children: Any) -> A.With:
        settings, body = _values(children)
        return A.With(settings, body, span=_cover(children))

    def agent_body(self, *items: A.Entry | A.Policy | A.With) -> tuple[A.Entry | A.Policy | A.With, ...]:
        return items

    def agent(self, *children: Any) -> A.Agent:
        name, params, returns, items = _values(children)
        return A.Agent(str(name), params, returns, items, name_span=_tspan(name), span=_cover(children))

    def type_alias(self, *children: Any) -> A.TypeAlias_:
        name, type_ = _values(children)
        return A.TypeAlias_(str(name), type_, name_span=_tspan(name), span=_cover(children))

    def field(self, name: Token, type_: A.TypeRef) -> tuple[str, A.TypeRef]:
        return (str(name), type_)

    def type_record(self, *children: Any) -> A.TypeRecord:
        name, *fields = _values(children)
        return A.TypeRecord(str(name), tuple(fields), name_span=_tspan(name), span=_cover(children))

    def function(self, *children: Any) -> A.Function:
        name, params, returns, body = _values(children)
        return A.Function(str(name), params, returns, body, name_span=_tspan(name), span=_cover(children))

    def start(self, *items: A.Item) -> A.Module:
        return A.Module(items, span=_cover(items))


_BUILD = _Build()


def _key(key: Token | A.Literal_) -> str:
    if isinstance(key, A.Literal_):
        return str(key.value)
    if key.type == "STRING":
        return unescape(key[1:-1])
    return str(key)


class _Comments(threading.local):
    items: list[tuple[int, int, str]]

    def __init__(self) -> None:
        self.items = []


_comments = _Comments()


def _collect_comment(tok: Token) -> Token:
    _comments.items.append((tok.line or 0, tok.column or 0, str(tok).rstrip()))
    return tok


@cache
def _parser() -> lark.Lark:
    grammar = resources.files("symbi_dsl").joinpath("symbiont.lark").read_text(encoding="utf-8")
    return lark.Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        maybe_placeholders=True,
        transformer=_BUILD,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


def raw_parser() -> lark.Lark:
    """The grammar without the tree building (the baseline of the parse benchmark)."""
    grammar = resources.files("symbi_dsl").joinpath("symbiont.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True)


_EXPR_START = {"NAME", "NUMBER", "STRING", "QUANTITY", "SECRET", "LSQB", "LBRACE", "LPAR", "UNARY_OP", "NOT", "MATCH"}


def _expected(names: set[str] | frozenset[str]) -> str:
    parser = _parser()
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
        readable.add(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    return ", ".join(sorted(readable))


def _syntax_diagnostic(reporter: Reporter, err: lark.exceptions.UnexpectedInput) -> None:
    line, column = getattr(err, "line", 0) or 0, getattr(err, "column", 0) or 0
    if line <= 0:  # lark reports -1 at the end of input
        lines = reporter.source.splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
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
        pos = err.pos_in_stream if isinstance(err.pos_in_stream, int) else -1
        ch = reporter.source[pos] if 0 <= pos < len(reporter.source) else "?"
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


def _item_bounds(source: str, line: int) -> tuple[int, int]:
    """Character offsets of the top-level item containing ``line`` (declarations start at column 1)."""
    starts = [m.start() for m in _TOP_LEVEL_RE.finditer(source)]
    offset = 0
    for _ in range(line - 1):
        nl = source.find("\n", offset)
        offset = len(source) if nl < 0 else nl + 1
    begin = max((s for s in starts if s <= offset), default=0)
    end = min((s for s in starts if s > offset), default=len(source))
    return begin, end


def _blank(source: str, begin: int, end: int) -> str:
    """``source`` with ``[begin, end)`` replaced by spaces, newlines kept (positions stay valid)."""
    return source[:begin] + re.sub(r"[^\n]", " ", source[begin:end]) + source[end:]


def parse(source: str, file: str = DEFAULT_FILE) -> A.Module:
    """The syntax tree of ``source``; :class:`DslError` with every syntax error found otherwise."""
    reporter = Reporter(source, file)
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        reporter.error("too_large", f"a definition may be at most {MAX_SOURCE_BYTES} bytes", A.Span(1, 1, 1, 2))
        reporter.raise_if_any()
    text = source
    for _ in range(MAX_SYNTAX_ERRORS):
        _comments.items = []
        try:
            module = cast(A.Module, _parser().parse(text))
        except lark.exceptions.UnexpectedInput as err:
            _syntax_diagnostic(reporter, err)
            line = max(1, getattr(err, "line", 1) or 1)
            begin, end = _item_bounds(text, line)
            if text[begin:end].strip() == "":
                break
            text = _blank(text, begin, end)
            continue
        except RecursionError:
            reporter.error("too_deep", "the definition nests too deeply to process", A.Span(1, 1, 1, 2))
            break
        except lark.exceptions.LarkError as err:  # pragma: no cover - a grammar/transformer defect
            reporter.error("syntax", f"cannot parse: {err}", A.Span(1, 1, 1, 2))
            break
        if not reporter.diagnostics:
            return A.Module(module.items, tuple(_comments.items), span=module.span)
        break
    reporter.raise_if_any()
    raise DslError([Diagnostic(code="syntax", message="cannot parse the definition", file=file)])
