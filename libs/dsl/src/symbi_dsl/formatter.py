"""Canonical formatting: one layout for every definition, so reviews see meaning, not whitespace.

Two spaces per level; ``key = value`` in ``metadata``, agent bodies and ``with``; ``key: value`` in the
other blocks; minimal parentheses (from the precedence rules); ``and``/``or``/``not`` written ``&&``,
``||``, ``!``; lists and records on one line unless that passes 100 characters. Comments are kept,
in order: a comment stays before the line it preceded, or at the end of the line it ended.

``format_source(format_source(x)) == format_source(x)`` and ``parse(format_source(x)) == parse(x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import DEFAULT_FILE, Diagnostic, DslError
from symbi_dsl.expressions import (
    POSTFIX,
    arm_text,
    catch_head,
    cond_text,
    expr,
    head,
    key,
    params_text,
    rule_text,
    starts_ambiguously,
    type_ref,
)
from symbi_dsl.parser import parse

INDENT = "  "
WIDTH = 100
KEYWORDS = frozenset(
    [
        "metadata",
        "agent",
        "policy",
        "type",
        "function",
        "schedule",
        "memory",
        "webhook",
        "channel",
        "with",
        "allow",
        "deny",
        "require",
        "audit",
        "let",
        "if",
        "else",
        "for",
        "in",
        "try",
        "catch",
        "return",
        "match",
        "true",
        "false",
        "null",
        "not",
        "and",
        "or",
    ]
)


class _Printer:
    def __init__(self, comments: Sequence[tuple[int, int, str]]) -> None:
        self.lines: list[str] = []
        self.comments = sorted(comments)
        self.next = 0
        self.depth = 0

    # --- comments
    def comments_before(self, line: int) -> None:
        while self.next < len(self.comments) and (line <= 0 or self.comments[self.next][0] < line):
            self.lines.append(INDENT * self.depth + self.comments[self.next][2])
            self.next += 1

    def trailing(self, line: int) -> None:
        if line > 0 and self.next < len(self.comments) and self.comments[self.next][0] == line and self.lines:
            self.lines[-1] += "  " + self.comments[self.next][2]
            self.next += 1

    # --- layout
    def line(self, text: str, span: A.Span) -> None:
        self.comments_before(span.line)
        self.lines.append(INDENT * self.depth + text)
        self.trailing(span.end_line)

    def block(self, header: str, span: A.Span, body: Callable[[], None]) -> None:
        self.comments_before(span.line)
        self.lines.append(INDENT * self.depth + header + " {")
        self.depth += 1
        body()
        if span.end_line:
            self.comments_before(span.end_line)
        self.depth -= 1
        self.lines.append(INDENT * self.depth + "}")
        self.trailing(span.end_line)

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    # --- entries
    def entry(self, e: A.Entry, sep: str) -> None:
        if isinstance(e.value, tuple):
            entries = e.value
            self.block(key(e.key), e.span, lambda: self.entries(entries, ":"))
            return
        head = f"{key(e.key)}{sep} "
        value = expr(e.value)
        if (
            len(INDENT * self.depth + head + value) > WIDTH
            and isinstance(e.value, A.Array | A.Record)
            and (e.value.items if isinstance(e.value, A.Array) else e.value.fields)
        ):
            self._broken(head, e.value, e.span)
        else:
            self.line(head + value, e.span)

    def _broken(self, head: str, value: A.Array | A.Record | A.TypeLiteral, span: A.Span, end: str = "") -> None:
        self.comments_before(span.line)
        opening, closing = ("[", "]") if isinstance(value, A.Array) else ("{", "}")
        if isinstance(value, A.TypeLiteral):
            opening = f"{value.name} {{"
        self.lines.append(INDENT * self.depth + head + opening)
        if isinstance(value, A.Array):
            parts = [expr(i) for i in value.items]
        else:
            parts = [f"{key(k)}: {expr(v)}" for k, v in value.fields]
        self.lines.extend(INDENT * (self.depth + 1) + p + "," for p in parts)
        self.lines.append(INDENT * self.depth + closing + end)
        self.trailing(span.end_line)

    def entries(self, entries: Sequence[A.Entry], sep: str) -> None:
        for e in entries:
            self.entry(e, sep)

    # --- statements
    def stmts(self, stmts: Sequence[A.Stmt]) -> None:
        for i, s in enumerate(stmts):
            self.stmt(s, stmts[i + 1] if i + 1 < len(stmts) else None)

    def _with_match(self, lead: str, value: A.Expr, span: A.Span, end: str) -> None:
        """``lead`` + ``value`` on one line, or a long ``match`` with one arm per line (block arms as blocks)."""
        text = lead + expr(value)
        too_long = len(INDENT * self.depth + text + end) > WIDTH
        if too_long and lead and isinstance(value, A.Array | A.Record | A.TypeLiteral) and len(_parts(value)) > 1:
            self._broken(lead, value, span, end)  # one item or field per line
            return
        blocks = isinstance(value, A.Match) and any(isinstance(a.body, tuple) for a in value.arms)
        if (
            not isinstance(value, A.Match)
            or not value.arms
            or (len(INDENT * self.depth + text) <= WIDTH and not blocks)
        ):
            self.line(text + end, span)
            return
        self.comments_before(span.line)
        self.lines.append(INDENT * self.depth + f"{lead}match {head(value.subject)} {{")
        self.depth += 1
        for arm in value.arms:
            if isinstance(arm.body, tuple):
                self.comments_before(arm.span.line)
                self.lines.append(INDENT * self.depth + f"{expr(arm.pattern)} => {{")
                self._inner(arm.body)
                self.lines.append(INDENT * self.depth + "},")
            else:
                self.line(arm_text(arm) + ",", arm.span)
        self.depth -= 1
        self.lines.append(INDENT * self.depth + "}" + end)
        self.trailing(span.end_line)

    def stmt(self, s: A.Stmt, following: A.Stmt | None = None) -> None:
        # A ';' keeps the next statement from continuing this one ("f; (x)" is not "f(x)").
        end = ";" if following is not None and (starts_ambiguously(following) or s == A.Return(None)) else ""
        match s:
            case A.Let():
                t = f": {type_ref(s.type)}" if s.type is not None else ""
                self._with_match(f"let {s.name}{t} = ", s.value, s.span, end)
            case A.Return():
                if s.value is None:
                    self.line("return" + end, s.span)
                else:
                    self._with_match("return ", s.value, s.span, end)
            case A.Assign():
                self._with_match(f"{expr(s.target, POSTFIX)} {s.op} ", s.value, s.span, end)
            case A.ExprStmt():
                self._with_match("", s.expr, s.span, end)
            case A.For():
                body = s.body
                self.block(f"for {s.var} in {head(s.iterable)}", s.span, lambda: self.stmts(body))
            case A.Try():
                self._try(s)
            case A.If():
                # An `if` is an expression too: a `;` keeps `(`, `[` or `-` on the next line from continuing it.
                self._if(s, ";" if following is not None and starts_ambiguously(following) else "")

    def _if(self, s: A.If, end: str) -> None:
        self.comments_before(s.span.line)
        self.lines.append(INDENT * self.depth + f"if {cond_text(s.cond)} {{")
        self._inner(s.then)
        orelse = s.orelse
        while isinstance(orelse, A.If):
            self.lines.append(INDENT * self.depth + f"}} else if {cond_text(orelse.cond)} {{")
            self._inner(orelse.then)
            orelse = orelse.orelse
        if orelse is not None:
            self.lines.append(INDENT * self.depth + "} else {")
            self._inner(orelse)
        self.lines.append(INDENT * self.depth + "}" + end)
        self.trailing(s.span.end_line)

    def _try(self, s: A.Try) -> None:
        self.comments_before(s.span.line)
        self.lines.append(INDENT * self.depth + "try {")
        self._inner(s.body)
        for c in s.catches:
            self.lines.append(INDENT * self.depth + f"}} {catch_head(c)} {{")
            self._inner(c.body)
        self.lines.append(INDENT * self.depth + "}")
        self.trailing(s.span.end_line)

    def _inner(self, stmts: Sequence[A.Stmt]) -> None:
        self.depth += 1
        self.stmts(stmts)
        self.depth -= 1

    # --- declarations
    def policy(self, p: A.Policy) -> None:
        def body() -> None:
            for r in p.rules:
                self.line(rule_text(r), r.span)

        self.block(f"policy {p.name}", p.span, body)

    def agent(self, a: A.Agent) -> None:
        returns = f" -> {type_ref(a.returns)}" if a.returns is not None else ""

        def body() -> None:
            previous: type | None = None
            for item in a.items:
                if previous is not None and (type(item) is not A.Entry or previous is not A.Entry):
                    self.blank()
                previous = type(item)
                match item:
                    case A.Entry():
                        self.entry(item, " =")
                    case A.Policy():
                        self.policy(item)
                    case A.With():
                        settings = ", ".join(f"{s.key} = {expr(_v(s))}" for s in item.settings)
                        self.block(f"with {settings}".rstrip(), item.span, partial(self.stmts, item.body))
                    case A.Function():
                        self.function(item)

        self.block(f"agent {a.name}({params_text(a.params)}){returns}", a.span, body)

    def function(self, f: A.Function) -> None:
        returns = f" -> {type_ref(f.returns)}" if f.returns is not None else ""
        self.block(f"function {f.name}({params_text(f.params)}){returns}", f.span, partial(self.stmts, f.body))

    def block_body(self, entries: Sequence[A.Entry | A.Policy]) -> None:
        for e in entries:
            if isinstance(e, A.Policy):
                self.policy(e)
            else:
                self.entry(e, ":")

    def item(self, item: A.Item) -> None:
        match item:
            case A.Metadata():
                self.block("metadata", item.span, lambda: self.entries(item.entries, " ="))
            case A.Agent():
                self.agent(item)
            case A.Policy():
                self.policy(item)
            case A.TypeAlias_():
                self.line(f"type {item.name} = {type_ref(item.type)}", item.span)
            case A.TypeRecord():
                fields = item.fields

                def body() -> None:
                    for name, t in fields:
                        self.lines.append(INDENT * self.depth + f"{name}: {type_ref(t)}")

                self.block(f"type {item.name} =", item.span, body)
            case A.Function():
                self.function(item)
            case A.Block():
                self.block(f"{item.kind} {item.name}", item.span, partial(self.block_body, item.entries))


def _parts(value: A.Array | A.Record | A.TypeLiteral) -> tuple[object, ...]:
    return value.items if isinstance(value, A.Array) else value.fields


def _v(entry: A.Entry) -> A.Expr:
    assert not isinstance(entry.value, tuple)
    return entry.value


def format_module(module: A.Module) -> str:
    """The canonical text of a parsed module (with its comments)."""
    printer = _Printer(module.comments)
    try:
        for item in module.items:
            printer.blank()
            printer.item(item)
    except RecursionError:
        raise DslError(
            [Diagnostic(code="too_deep", message="the definition nests too deeply to format", line=1, column=1)]
        ) from None
    printer.comments_before(0)
    text = "\n".join(printer.lines).strip("\n")
    return text + "\n" if text else ""


def format_source(source: str, file: str = DEFAULT_FILE) -> str:
    """``source`` formatted canonically; :class:`DslError` if it does not parse."""
    return format_module(parse(source, file))
