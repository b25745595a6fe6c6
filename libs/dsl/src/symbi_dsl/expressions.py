"""Expressions, types and rules as one line of canonical text, with the fewest parentheses the precedence
rules allow; :mod:`symbi_dsl.formatter` lays them out, and a compiled ``deny`` quotes its rule with them."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from symbi_dsl import ast as A

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

# Binding strength; an operand weaker than its context gets parentheses.
LAMBDA, OR, AND, CMP, SUM, PRODUCT, UNARY, POSTFIX, ATOM = range(9)
_BINARY = {"||": OR, "&&": AND, "+": SUM, "-": SUM, "*": PRODUCT, "/": PRODUCT, "%": PRODUCT}
_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def _escape(ch: str) -> str:
    if ch in _ESC:
        return _ESC[ch]
    if ord(ch) < 0x20 or ch in "\x7f\x85\u2028\u2029":  # control characters and line separators
        return f"\\u{ord(ch):04x}"
    return ch


def string(text: str) -> str:
    return '"' + "".join(_escape(ch) for ch in text) + '"'


def key(text: str) -> str:
    """A key as written: bare if it is a name (keywords too: the grammar takes them as keys), except the word
    operators, which after a value would continue it (``x\n in = 1`` reads as ``x in …``)."""
    return text if _IDENT_RE.match(text) and text not in ("in", "and", "or") else string(text)


def _prec(e: A.Expr) -> int:
    match e:
        case A.Lambda():
            return LAMBDA
        case A.Binary():
            return _BINARY.get(e.op, CMP)
        case A.Unary():
            return UNARY
        case A.Member() | A.Index() | A.Call():
            return POSTFIX
    return ATOM


_ENDS_IN_TYPE_NAME = re.compile(r"(?<![\w.])[A-Z][A-Za-z0-9_]*$")


def head(e: A.Expr) -> str:
    """``e`` where a ``{`` follows (a condition, a loop's iterable, a match's subject): in parentheses if it
    ends in a capitalised name, which the ``{`` would otherwise open as a type literal (``if Ready {``)."""
    text = expr(e, OR)
    return f"({text})" if _ENDS_IN_TYPE_NAME.search(text) else text


def cond_text(c: A.Expr | A.LetCond) -> str:
    """An ``if``'s condition: an expression or ``let Pattern = value``."""
    if isinstance(c, A.LetCond):
        return f"let {destructure(c.pattern)} = {head(c.value)}"
    return head(c)


def destructure(p: A.Destructure) -> str:
    if p.args is None:
        return p.name
    return p.name + "(" + ", ".join(destructure(a) for a in p.args) + ")"


def fields_text(fields: Sequence[tuple[str, A.Expr]]) -> str:
    return ", ".join(f"{key(k)}: {expr(v)}" for k, v in fields)


def arg_text(a: A.Expr | A.NamedArg) -> str:
    return f"{a.name} = {expr(a.value)}" if isinstance(a, A.NamedArg) else expr(a)


def block_inline(stmts: Sequence[A.Stmt]) -> str:
    """A ``{ … }`` block on one line, statements separated by ``;``."""
    return "{ " + "; ".join(stmt_inline(s) for s in stmts) + " }" if stmts else "{}"


def catch_head(c: A.Catch) -> str:
    if c.name is None:
        return "catch"
    return f"catch ({c.type_name} {c.name})" if c.type_name else f"catch ({c.name})"


def if_text(s: A.If) -> str:
    text = f"if {cond_text(s.cond)} {block_inline(s.then)}"
    if isinstance(s.orelse, A.If):
        return f"{text} else {if_text(s.orelse)}"
    return f"{text} else {block_inline(s.orelse)}" if s.orelse is not None else text


def stmt_inline(s: A.Stmt) -> str:
    """A statement on one line (inside an expression: an ``if`` expression's branch, a match arm's block)."""
    match s:
        case A.Let():
            t = f": {type_ref(s.type)}" if s.type is not None else ""
            return f"let {s.name}{t} = {expr(s.value)}"
        case A.Assign():
            return f"{expr(s.target, POSTFIX)} {s.op} {expr(s.value)}"
        case A.Return():
            return "return" if s.value is None else f"return {expr(s.value)}"
        case A.ExprStmt():
            return expr(s.expr)
        case A.If():
            return if_text(s)
        case A.For():
            return f"for {s.var} in {head(s.iterable)} {block_inline(s.body)}"
        case A.Try():
            return f"try {block_inline(s.body)} " + " ".join(
                f"{catch_head(c)} {block_inline(c.body)}" for c in s.catches
            )
    raise AssertionError(f"unknown statement {s!r}")  # pragma: no cover


def arm_text(a: A.Arm) -> str:
    body = block_inline(a.body) if isinstance(a.body, tuple) else expr(a.body)
    return f"{expr(a.pattern)} => {body}"


def _number(value: float | int) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "1e999"
        return repr(value)
    return str(value)


def expr(e: A.Expr, context: int = LAMBDA) -> str:
    """``e`` on one line, in parentheses if it binds less tightly than ``context`` requires."""
    text = _expr(e)
    return f"({text})" if _prec(e) < context else text


def _expr(e: A.Expr) -> str:
    match e:
        case A.Literal_(kind="string"):
            return string(str(e.value))
        case A.Literal_(kind="bool"):
            return "true" if e.value else "false"
        case A.Literal_(kind="null"):
            return "null"
        case A.Literal_():
            return _number(e.value)  # type: ignore[arg-type]
        case A.Quantity():
            return e.text
        case A.Secret():
            return f"vault://{e.path}"
        case A.Name():
            return e.id
        case A.Array():
            return "[" + ", ".join(expr(i) for i in e.items) + "]"
        case A.Record():
            return "{" + fields_text(e.fields) + "}"
        case A.TypeLiteral():
            return f"{e.name} {{ {fields_text(e.fields)} }}" if e.fields else f"{e.name} {{}}"
        case A.If():
            return if_text(e)
        case A.Unary():
            return e.op + expr(e.operand, UNARY)
        case A.Binary():
            p = _BINARY.get(e.op, CMP)
            return f"{expr(e.left, p)} {e.op} {expr(e.right, p + 1)}"
        case A.Member():
            return f"{_postfix_obj(e.obj)}.{e.name}"
        case A.Index():
            return f"{_postfix_obj(e.obj)}[{expr(e.index)}]"
        case A.Call():
            return f"{_postfix_obj(e.func)}(" + ", ".join(arg_text(a) for a in e.args) + ")"
        case A.Lambda():
            return f"{e.param} => {expr(e.body)}"
        case A.Match():
            arms = ", ".join(arm_text(a) for a in e.arms)
            return f"match {head(e.subject)} {{ {arms} }}" if arms else f"match {head(e.subject)} {{}}"
    raise AssertionError(f"unknown expression {e!r}")  # pragma: no cover


def _postfix_obj(e: A.Expr) -> str:
    """The object of ``.name``/``[i]``/``(args)``; a number in parentheses, so ``(5).minutes`` stays a member."""
    if isinstance(e, A.Literal_ | A.Secret) and getattr(e, "kind", "") != "string":
        return f"({_expr(e)})"
    return expr(e, POSTFIX)


def starts_ambiguously(s: A.Stmt) -> bool:
    """Whether ``s`` would continue the previous statement's expression (a call, index or subtraction)."""
    if isinstance(s, A.Assign):
        return expr(s.target, POSTFIX)[:1] in ("(", "[", "-")
    if not isinstance(s, A.ExprStmt):
        return False
    return expr(s.expr)[:1] in ("(", "[", "-")


def type_ref(t: A.TypeRef) -> str:
    args = "<" + ", ".join(type_ref(a) for a in t.args) + ">" if t.args else ""
    return f"{t.name}{args}{'?' if t.optional else ''}"


def params_text(params: Sequence[A.Param]) -> str:
    out = []
    for p in params:
        default = f" = {expr(p.default)}" if p.default is not None else ""
        out.append(f"{p.name}: {type_ref(p.type)}{default}")
    return ", ".join(out)


def rule_text(rule: A.Rule) -> str:
    """A rule as one line (also the human-readable reason of a compiled ``deny``)."""
    cond = f" if {expr(rule.condition)}" if rule.condition is not None else ""
    return f"{rule.kind}: {expr(rule.action)}{cond}"
