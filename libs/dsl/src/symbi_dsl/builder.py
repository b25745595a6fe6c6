"""The syntax tree built while lark reduces: :class:`_Build` is lark's inline transformer (its method names
are the grammar's rules), so there is no parse tree and no position propagation; each node's span runs
from its first to its last positioned child."""

from __future__ import annotations

from typing import Any

import lark
from lark import Token, v_args

from symbi_dsl import ast as A
from symbi_dsl.literals import quantity, unescape

#: Tokens that carry meaning; the others (keywords, braces, separators) only mark where nodes start and end.
_VALUE_TOKENS = frozenset(
    (
        "NAME",
        "STRING",
        "NUMBER",
        "QUANTITY",
        "SECRET",
        "CMP_OP",
        "ADD_OP",
        "MUL_OP",
        "UNARY_OP",
        "OR_OP",
        "AND_OP",
        "ASSIGN_OP",
        "TYPE_OPEN",
    )
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


@v_args(inline=True)
class _Build(lark.Transformer[Token, Any]):
    """Builds :mod:`symbi_dsl.ast` nodes while lark reduces (method names are the grammar's rules)."""

    # --- atoms
    def string(self, tok: Token) -> A.Literal_:
        return A.Literal_("string", unescape(tok[1:-1]), span=_tspan(tok))

    def number(self, tok: Token) -> A.Literal_:
        text = str(tok).replace("_", "")
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

    def type_literal(self, opening: Token, *children: Any) -> A.TypeLiteral:
        name = str(opening)[:-1].rstrip()
        fields = tuple(f for f in _values(children) if f is not None)
        return A.TypeLiteral(name, fields, span=_cover((opening, *children)))

    def unary_value(self, op: Token, tok: Token) -> A.Unary:
        return self.unary_op(op, self.number(tok))

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

    def args(self, *items: A.Expr | A.NamedArg | None) -> tuple[A.Expr | A.NamedArg, ...]:
        return tuple(i for i in items if i is not None)

    def named_arg(self, name: Token, value: A.Expr) -> A.NamedArg:
        return A.NamedArg(str(name), value, span=_cover((name, value)))

    def member(self, obj: A.Expr, name: Token) -> A.Member:
        return A.Member(obj, str(name), span=_cover((obj, name)))

    def index(self, obj: A.Expr, idx: A.Expr) -> A.Index:
        return A.Index(obj, idx, span=_cover((obj, idx)))

    def lambda_(self, param: Token, body: A.Expr) -> A.Lambda:
        return A.Lambda(str(param), body, span=_cover((param, body)))

    def arm(self, pattern: A.Literal_ | A.Name, body: A.Expr | Body) -> A.Arm:
        return A.Arm(pattern, body, span=_cover((pattern, body)))

    def if_(self, *children: Any) -> A.If:
        # "if" (expr | let_cond) block ("else" (if | block) | None None)
        return A.If(children[1], children[2], children[4], span=_cover(children))

    def let_cond(self, *children: Any) -> A.LetCond:
        pattern, value = _values(children)
        return A.LetCond(pattern, value, span=_cover(children))

    def destructure(self, *children: Any) -> A.Destructure:
        name, *rest = _values(children)
        has_args = any(isinstance(c, Token) and c.type == "LPAR" for c in children)
        args = tuple(r for r in rest if r is not None) if has_args else None
        return A.Destructure(str(name), args, span=_cover(children))

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

    arm_block = stmt_block
    if_block = stmt_block

    def let_stmt(self, *children: Any) -> A.Let:
        # "let" NAME (":" type | None None) "=" expr
        return A.Let(str(children[1]), children[3], children[5], span=_cover(children))

    def for_stmt(self, *children: Any) -> A.For:
        var, iterable, body = _values(children)
        return A.For(str(var), iterable, body, span=_cover(children))

    def try_stmt(self, *children: Any) -> A.Try:
        body, *catches = _values(children)
        return A.Try(body, tuple(catches), span=_cover(children))

    def catch_clause(self, *children: Any) -> A.Catch:
        body = children[-1]
        given = [str(c) for c in children if isinstance(c, Token) and c.type == "NAME"]
        type_name, name = (given[0], given[1]) if len(given) == 2 else (None, given[0] if given else None)
        return A.Catch(type_name, name, body, span=_cover(children))

    def assign_op(self, tok: Token) -> Token:
        return tok

    def assign_stmt(self, target: A.Expr, op: Token, value: A.Expr) -> A.Assign:
        return A.Assign(target, str(op), value, span=_cover((target, value)))

    def return_stmt(self, *children: Any) -> A.Return:
        (value,) = _values(children)
        return A.Return(value, span=_cover(children))

    def expr_stmt(self, expr: A.Expr) -> A.ExprStmt | A.If:
        if isinstance(expr, A.If):  # an `if` standing alone is the statement
            return expr
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

    def block_body(self, *entries: A.Entry | A.Policy) -> tuple[A.Entry | A.Policy, ...]:
        return entries

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

    def agent_body(self, *items: A.Entry | A.Policy | A.With | A.Function) -> tuple[Any, ...]:
        return items

    def agent(self, *children: Any) -> A.Agent:
        # "agent" NAME ("(" params ")" | None None None) returns "{" body "}"
        name, params, returns, items = children[1], children[3], children[5], children[7]
        return A.Agent(str(name), params or (), returns, items, name_span=_tspan(name), span=_cover(children))

    def type_alias(self, *children: Any) -> A.TypeAlias_:
        name, type_ = _values(children)
        return A.TypeAlias_(str(name), type_, name_span=_tspan(name), span=_cover(children))

    def field(self, name: Token, type_: A.TypeRef) -> tuple[str, A.TypeRef]:
        return (str(name), type_)

    def type_record(self, *children: Any) -> A.TypeRecord:
        name, *fields = _values(children)
        kept = tuple(f for f in fields if f is not None)
        return A.TypeRecord(str(name), kept, name_span=_tspan(name), span=_cover(children))

    def function(self, *children: Any) -> A.Function:
        name, params, returns, body = _values(children)
        return A.Function(str(name), params, returns, body, name_span=_tspan(name), span=_cover(children))

    def start(self, *items: A.Item) -> A.Module:
        return A.Module(items, span=_cover(items))


BUILD = _Build()


def _key(key: Token | A.Literal_) -> str:
    if isinstance(key, A.Literal_):
        return str(key.value)
    if key.type == "STRING":
        return unescape(key[1:-1])
    return str(key)
