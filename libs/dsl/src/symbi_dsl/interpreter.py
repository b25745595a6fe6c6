"""Running an agent body: statements and expressions of the syntax tree, evaluated with step and time budgets.

Pure: the interpreter touches nothing but the values it is given. Everything an agent does to the world
goes through ``builtins`` (a name → callable map the host provides; later the SDK's actions, each passing
policy and audit). Values are plain data — strings, numbers, booleans, ``None``, lists, dicts — plus
:class:`Closure` (a lambda or DSL function) and :class:`SecretRef` (a ``vault://`` reference, resolved only
by a builtin). Methods are a fixed list on lists, strings and dicts (:mod:`symbi_dsl.methods`); there is no
attribute access to anything else, so a body cannot reach the host.

Every failure is a :class:`DslRuntimeError` naming the file, line and column; :class:`BudgetExceeded` when
the step or time budget runs out (it cannot be caught by the body's ``try``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import DEFAULT_FILE
from symbi_dsl.methods import METHODS, arithmetic, compare, truthy


class DslRuntimeError(Exception):
    """A failure while running a body, at ``file:line:column``; ``kind`` is what a typed ``catch`` matches."""

    def __init__(self, message: str, span: A.Span = A.NO_SPAN, file: str = DEFAULT_FILE, kind: str = "Error"):
        self.message, self.span, self.file, self.kind = message, span, file, kind
        where = f"{file}:{span.line}:{span.column}" if span.line else file
        super().__init__(f"{where}: {message}")


class BudgetExceeded(DslRuntimeError):
    """The body ran more steps or longer than allowed."""


@dataclass(frozen=True)
class SecretRef:
    """A ``vault://`` reference: a builtin resolves it; the body only passes it on."""

    path: str


@dataclass
class Closure:
    """A lambda or a DSL function, with the variables it closes over."""

    params: tuple[str, ...]
    body: A.Expr | tuple[A.Stmt, ...]
    env: dict[str, Any]
    name: str = "lambda"


class _Return(Exception):
    """``return``: unwinds to the function or body being run (control flow, not an error)."""

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass
class Budget:
    """At most ``steps`` statements, calls and loop turns, and ``seconds`` of wall time."""

    steps: int = 100_000
    seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    used: int = 0
    started: float = field(default=0.0)


class Interpreter:
    """Runs statements of one file with the given builtins and budget."""

    def __init__(
        self,
        builtins: Mapping[str, Callable[..., Any]] | None = None,
        *,
        functions: Sequence[A.Function] = (),
        budget: Budget | None = None,
        file: str = DEFAULT_FILE,
    ) -> None:
        self.builtins = dict(builtins or {})
        self.budget = budget or Budget()
        self.file = file
        self.globals: dict[str, Any] = {
            f.name: Closure(tuple(p.name for p in f.params), f.body, {}, f.name) for f in functions
        }

    # --- entry points

    def run(self, stmts: Sequence[A.Stmt], env: Mapping[str, Any] | None = None) -> Any:
        """Run a body (a ``with`` block's statements) and return its value: what ``return`` gives, else the
        value of a trailing expression, else None."""
        self.budget.started = self.budget.clock()
        self.budget.used = 0
        try:
            return self._block(stmts, dict(env or {}))
        except _Return as r:
            return r.value
        except RecursionError:
            raise BudgetExceeded("the body nests or recurses too deeply", A.NO_SPAN, self.file) from None

    def call(
        self, fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None, span: A.Span = A.NO_SPAN
    ) -> Any:
        """Call a builtin or a closure (a DSL function or lambda)."""
        self._step(span)
        if isinstance(fn, Closure):
            if kwargs:
                unknown = set(kwargs) - set(fn.params)
                if unknown:
                    raise self._error(f"{fn.name}() has no parameter {sorted(unknown)[0]!r}", span)
            if len(args) > len(fn.params):
                raise self._error(f"{fn.name}() takes {len(fn.params)} argument(s), got {len(args)}", span)
            env = {**fn.env, **dict(zip(fn.params, args, strict=False)), **(kwargs or {})}
            for missing in fn.params[len(args) :]:
                env.setdefault(missing, None)
            if isinstance(fn.body, tuple):
                try:
                    return self._block(fn.body, env)
                except _Return as r:
                    return r.value
            return self.eval(fn.body, env)
        if callable(fn) and not isinstance(fn, type):
            try:
                return fn(*args, **(kwargs or {}))
            except DslRuntimeError:
                raise
            except Exception as err:  # a builtin's failure is the body's error, catchable by its try
                raise self._error(str(err) or type(err).__name__, span, type(err).__name__) from None
        raise self._error(f"{_kind(fn)} is not callable", span)

    # --- statements

    def _block(self, stmts: Sequence[A.Stmt], env: dict[str, Any]) -> Any:
        value = None
        for stmt in stmts:
            value = self._stmt(stmt, env)
        return value

    def _stmt(self, s: A.Stmt, env: dict[str, Any]) -> Any:
        self._step(s.span)
        match s:
            case A.Let():
                env[s.name] = self.eval(s.value, env)
            case A.Assign():
                self._assign(s, env)
            case A.Return():
                raise _Return(None if s.value is None else self.eval(s.value, env))
            case A.ExprStmt():
                return self.eval(s.expr, env)
            case A.If():
                return self._if(s, env)
            case A.For():
                items = self.eval(s.iterable, env)
                if not isinstance(items, list | str | dict):
                    raise self._error(f"cannot loop over {_kind(items)}", s.iterable.span)
                for item in list(items):
                    self._step(s.span)
                    env[s.var] = item
                    self._block(s.body, env)
            case A.Try():
                return self._try(s, env)
        return None

    def _assign(self, s: A.Assign, env: dict[str, Any]) -> None:
        value = self.eval(s.value, env)
        target = s.target
        if s.op != "=":
            value = arithmetic(s.op[0], self.eval(target, env), value, self._error_at(s.span))
        match target:
            case A.Name():
                env[target.id] = value
            case A.Member():
                obj = self.eval(target.obj, env)
                if not isinstance(obj, dict):
                    raise self._error(f"cannot set .{target.name} on {_kind(obj)}", target.span)
                obj[target.name] = value
            case A.Index():
                obj, key = self.eval(target.obj, env), self.eval(target.index, env)
                try:
                    obj[key] = value
                except (TypeError, IndexError, KeyError):
                    raise self._error(f"cannot set [{key!r}] on {_kind(obj)}", target.span) from None
            case _:
                raise self._error("only a name, a.b or a[i] can be assigned to", target.span)

    def _if(self, s: A.If, env: dict[str, Any]) -> Any:
        if isinstance(s.cond, A.LetCond):
            taken = _bind(s.cond.pattern, self.eval(s.cond.value, env), env)
        else:
            taken = truthy(self.eval(s.cond, env))
        if taken:
            return self._block(s.then, env)
        if isinstance(s.orelse, A.If):
            return self._if(s.orelse, env)
        return self._block(s.orelse, env) if s.orelse is not None else None

    def _try(self, s: A.Try, env: dict[str, Any]) -> Any:
        try:
            return self._block(s.body, env)
        except BudgetExceeded:
            raise
        except DslRuntimeError as err:
            for c in s.catches:
                if c.type_name is None or c.type_name in (err.kind, "Error"):
                    if c.name is not None:
                        env[c.name] = {"message": err.message, "type": err.kind, "line": err.span.line}
                    return self._block(c.body, env)
            raise

    # --- expressions

    def eval(self, e: A.Expr, env: dict[str, Any]) -> Any:
        """The value of ``e`` in ``env``."""
        # The commonest nodes first, by exact type: the match below tries its cases one by one.
        if type(e) is A.Name:
            return env[e.id] if e.id in env else self._lookup(e, env)
        if type(e) is A.Literal_:
            return e.value
        if type(e) is A.Binary and e.op not in ("&&", "||"):
            left, right = self.eval(e.left, env), self.eval(e.right, env)
            if e.op in _ARITHMETIC:
                return arithmetic(e.op, left, right, self._error_at(e.span))
            return compare(e.op, left, right, self._error_at(e.span))
        match e:
            case A.Literal_():
                return e.value
            case A.Quantity():
                return e.value
            case A.Secret():
                return SecretRef(e.path)
            case A.Name():
                return self._lookup(e, env)
            case A.Array():
                return [self.eval(i, env) for i in e.items]
            case A.Record() | A.TypeLiteral():
                return {k: self.eval(v, env) for k, v in e.fields}
            case A.Unary(op="!"):
                return not truthy(self.eval(e.operand, env))
            case A.Unary():
                return arithmetic("-", 0, self.eval(e.operand, env), self._error_at(e.span))
            case A.Binary(op="&&"):
                return truthy(self.eval(e.left, env)) and truthy(self.eval(e.right, env))
            case A.Binary(op="||"):
                return truthy(self.eval(e.left, env)) or truthy(self.eval(e.right, env))
            case A.Binary():
                left, right = self.eval(e.left, env), self.eval(e.right, env)
                if e.op in ("+", "-", "*", "/", "%"):
                    return arithmetic(e.op, left, right, self._error_at(e.span))
                return compare(e.op, left, right, self._error_at(e.span))
            case A.Member():
                return self._member(self.eval(e.obj, env), e.name, e.span)
            case A.Index():
                return self._index(self.eval(e.obj, env), self.eval(e.index, env), e.span)
            case A.Call():
                return self._call(e, env)
            case A.Lambda():
                return Closure((e.param,), e.body, env)
            case A.Match():
                return self._match(e, env)
            case A.If():
                return self._if(e, env)
        raise self._error(f"cannot evaluate {type(e).__name__}", getattr(e, "span", A.NO_SPAN))

    def _lookup(self, e: A.Name, env: dict[str, Any]) -> Any:
        for scope in (env, self.globals, self.builtins):
            if e.id in scope:
                return scope[e.id]
        if e.id in ("None", "none"):
            return None
        raise self._error(f"{e.id!r} is not defined", e.span, "NameError")

    def _member(self, obj: Any, name: str, span: A.Span) -> Any:
        if isinstance(obj, dict):
            if name in obj:
                return obj[name]
            if name not in METHODS.get(dict, {}):
                return None  # an absent field reads as null, as in JSON
        methods = METHODS.get(type(obj), {})
        if name in methods:
            method = methods[name]
            return lambda *args: method(self, obj, *args)
        raise self._error(f"{_kind(obj)} has no field or method {name!r}", span)

    def _index(self, obj: Any, key: Any, span: A.Span) -> Any:
        if isinstance(obj, dict):
            return obj.get(key)
        if isinstance(obj, list | str) and isinstance(key, int) and not isinstance(key, bool):
            try:
                return obj[key]
            except IndexError:
                raise self._error(f"index {key} is out of range (length {len(obj)})", span, "IndexError") from None
        raise self._error(f"cannot index {_kind(obj)} with {_kind(key)}", span)

    def _call(self, e: A.Call, env: dict[str, Any]) -> Any:
        fn = self.eval(e.func, env)
        args = [self.eval(a, env) for a in e.args if not isinstance(a, A.NamedArg)]
        kwargs = {a.name: self.eval(a.value, env) for a in e.args if isinstance(a, A.NamedArg)}
        try:
            return self.call(fn, args, kwargs, e.span)
        except DslRuntimeError as err:
            if err.span.line:
                raise
            # Raised where no position is known (a lambda run by a method like map): the call's position.
            raise type(err)(err.message, e.span, err.file, err.kind) from None

    def _match(self, e: A.Match, env: dict[str, Any]) -> Any:
        subject = self.eval(e.subject, env)
        for arm in e.arms:
            p = arm.pattern
            if (isinstance(p, A.Name) and (p.id == "_" or env.get(p.id, _NOTHING) == subject)) or (
                isinstance(p, A.Literal_) and p.value == subject and type(p.value) is type(subject)
            ):
                return self._block(arm.body, env) if isinstance(arm.body, tuple) else self.eval(arm.body, env)
        raise self._error(f"no arm matches {subject!r}", e.span, "MatchError")

    # --- budgets and errors

    def _step(self, span: A.Span) -> None:
        b = self.budget
        b.used += 1
        if b.used > b.steps:
            raise BudgetExceeded(f"the body ran more than {b.steps} steps", span, self.file, "BudgetExceeded")
        if b.used % 256 == 0 and b.clock() - b.started > b.seconds:
            raise BudgetExceeded(f"the body ran longer than {b.seconds:g}s", span, self.file, "BudgetExceeded")

    def _error(self, message: str, span: A.Span, kind: str = "Error") -> DslRuntimeError:
        return DslRuntimeError(message, span, self.file, kind)

    def _error_at(self, span: A.Span) -> Callable[[str], DslRuntimeError]:
        return lambda message: self._error(message, span, "TypeError")


_NOTHING = object()
_ARITHMETIC = frozenset("+-*/%")


def _bind(p: A.Destructure, value: Any, env: dict[str, Any]) -> bool:
    """``if let``: ``Some(x)`` matches anything but null, ``None`` matches null, ``_`` anything, a name binds."""
    if p.args is None:
        if p.name == "None":
            return value is None
        if p.name != "_":
            env[p.name] = value
        return True
    if p.name in ("Some", "Ok") and len(p.args) == 1:
        return value is not None and _bind(p.args[0], value, env)
    if isinstance(value, list) and len(value) == len(p.args):
        return all(_bind(sub, item, env) for sub, item in zip(p.args, value, strict=True))
    return False


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a record"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
