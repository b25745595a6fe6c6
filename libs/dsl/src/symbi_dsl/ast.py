"""The syntax tree of a definition: immutable dataclasses, compared without their source positions.

Positions (``span``) are excluded from equality on purpose: ``parse(fmt(x)) == parse(x)`` is how the
formatter is tested, and formatting moves everything around. Parentheses are not kept either; the
formatter puts back exactly those the precedence rules need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class Span:
    """Where a node is in its file: 1-based line and column of its first and last character."""

    line: int = 0
    column: int = 0
    end_line: int = 0
    end_column: int = 0
    start_pos: int = 0
    end_pos: int = 0


NO_SPAN = Span()


# --- expressions ---------------------------------------------------------------------------------

LiteralKind = Literal["string", "int", "float", "bool", "null"]


@dataclass(frozen=True, slots=True)
class Literal_:
    """A string, number, boolean or null. ``kind`` keeps ``1`` and ``true`` apart (``1 == True`` in Python)."""

    kind: LiteralKind
    value: str | int | float | bool | None
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Quantity:
    """A duration (``30s``, ``5.minutes``) or a size (``512MB``) as written; ``value`` is seconds or bytes."""

    text: str
    kind: Literal["duration", "size"]
    value: float
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Secret:
    """A ``vault://path`` reference: resolved at run time, never stored in the configuration as a value."""

    path: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Array:
    items: tuple[Expr, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Record:
    fields: tuple[tuple[str, Expr], ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Unary:
    op: Literal["!", "-"]
    operand: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Expr
    right: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Member:
    obj: Expr
    name: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Index:
    obj: Expr
    index: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class NamedArg:
    """``name = value`` (or ``name: value``) among a call's arguments."""

    name: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Call:
    func: Expr
    args: tuple[Expr | NamedArg, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class TypeLiteral:
    """``Name { field: value, … }``: a record that says which type it is."""

    name: str
    fields: tuple[tuple[str, Expr], ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Lambda:
    param: str
    body: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Arm:
    """``pattern => value`` or ``pattern => { statements }`` (``body`` is then a tuple of statements)."""

    pattern: Literal_ | Name
    body: Expr | tuple[Stmt, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Match:
    subject: Expr
    arms: tuple[Arm, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Destructure:
    """The pattern of ``if let``: a name (``_`` matches anything) or ``Name(pattern, …)``."""

    name: str
    args: tuple[Destructure, ...] | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class LetCond:
    """The condition of ``if let Pattern = value``."""

    pattern: Destructure
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class If:
    """``if cond { … } else …``: a statement, or an expression (the value of the branch taken)."""

    cond: Expr | LetCond
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...] | If | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


Expr: TypeAlias = (
    Literal_
    | Quantity
    | Secret
    | Name
    | Array
    | Record
    | TypeLiteral
    | Unary
    | Binary
    | Member
    | Index
    | Call
    | Lambda
    | Match
    | If
)

# --- types ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TypeRef:
    """``Name``, ``Name<Args>``, ``[T]`` (spelled ``List<T>`` in the tree), with ``?`` for optional."""

    name: str
    args: tuple[TypeRef, ...] = ()
    optional: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


# --- statements ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Let:
    name: str
    type: TypeRef | None
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class For:
    var: str
    iterable: Expr
    body: tuple[Stmt, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Catch:
    """``catch { … }``, ``catch (e) { … }`` or ``catch (ErrorType e) { … }``."""

    type_name: str | None
    name: str | None
    body: tuple[Stmt, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Try:
    body: tuple[Stmt, ...]
    catches: tuple[Catch, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Assign:
    """``target = value`` or a compound ``target += value`` (``-=``, ``*=``, ``/=``, ``%=``)."""

    target: Expr
    op: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Return:
    value: Expr | None
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class ExprStmt:
    expr: Expr
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


Stmt: TypeAlias = Let | If | For | Try | Assign | Return | ExprStmt

# --- declarations --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """``key = value`` / ``key: value``, or a nested ``key { … }`` (then ``value`` is a tuple of entries)."""

    key: str
    value: Expr | tuple[Entry, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: TypeRef
    default: Expr | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


RuleKind = Literal["allow", "deny", "require", "audit"]


@dataclass(frozen=True, slots=True)
class Rule:
    kind: RuleKind
    action: Expr
    condition: Expr | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class With:
    """``with key = value, … { body }``: execution settings and the behaviour they apply to."""

    settings: tuple[Entry, ...]
    body: tuple[Stmt, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    params: tuple[Param, ...]
    returns: TypeRef | None
    items: tuple[Entry | Policy | With | Function, ...]
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Metadata:
    entries: tuple[Entry, ...]
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class TypeAlias_:
    name: str
    type: TypeRef
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class TypeRecord:
    name: str
    fields: tuple[tuple[str, TypeRef], ...]
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    params: tuple[Param, ...]
    returns: TypeRef | None
    body: tuple[Stmt, ...]
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


BlockKind = Literal["schedule", "memory", "webhook", "channel"]


@dataclass(frozen=True, slots=True)
class Block:
    """A ``schedule``, ``memory``, ``webhook`` or ``channel`` block: a name, its settings and (channels)
    its named policies, in source order."""

    kind: BlockKind
    name: str
    entries: tuple[Entry | Policy, ...]
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


Item: TypeAlias = Metadata | Agent | Policy | TypeAlias_ | TypeRecord | Function | Block


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed file, with its comments (line, column, text) for the formatter."""

    items: tuple[Item, ...]
    comments: tuple[tuple[int, int, str], ...] = field(default=(), compare=False, repr=False)
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)
