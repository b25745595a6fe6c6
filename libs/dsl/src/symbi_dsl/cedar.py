"""Policy blocks to Cedar: one Cedar policy per rule, named ``@id("<agent>.<policy>.<n>")``.

The mapping (shared with the policy service, which reads exactly these annotations)::

    allow:   tool.invoke("search") if c     permit(principal == Agent::"id", action == Action::"tool.invoke",
                                                   resource == Tool::"search") when { c };
    deny:    data.write if c                 @reason("…") forbid(…) when { c };
    require: approval(data.export)           @require_approval("true") permit(…);
             redact(data.read("x"), ["ssn"]) @redact("ssn") permit(…);
             cap_resources(sandbox.start, {memory_mb: 512, cpu_cores: 1})
                                             @cap_resources("memory_mb=512,cpu_cores=1") permit(…);
             log_full(tool.invoke)           @log_full("true") permit(…);
    audit:   data.read("x")                  @log_full("true") permit(…);

Conditions read ``principal.*``, ``resource.*`` and ``context.*``. Every attribute is optional in the
schema, so each comparison is guarded with ``has``: a comparison on an absent attribute is false.
DSL ``x in list`` becomes Cedar ``list.contains(x)`` (Cedar's own ``in`` is entity membership).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from symbi_common.policy.shape import shape_problem

from symbi_dsl import ast as A
from symbi_dsl.diagnostics import Reporter
from symbi_dsl.expressions import rule_text

#: The resource entity type an action's argument names, by the action's first segment.
RESOURCE_TYPES = {
    "tool": "Tool",
    "model": "Model",
    "data": "Data",
    "memory": "Memory",
    "message": "Agent",
    "channel": "Channel",
    "agent": "Agent",
    "task": "Host",
    "sandbox": "Task",
    "host": "Host",
}
ROOTS = ("principal", "resource", "context")
CONDITION_FUNCTIONS = ("approval", "redact", "cap_resources", "log_full")
CAP_KEYS = ("memory_mb", "cpu_cores", "disk_io_mbps", "network_io_mbps", "execution_timeout_s")
_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\Z")
_METHODS = ("contains", "containsAll", "containsAny", "isEmpty")
_CMP = ("==", "!=", "<", "<=", ">", ">=")


class _Bad(Exception):
    """An expression that has no Cedar equivalent (reported once, at its position)."""

    def __init__(self, message: str, node: A.Expr | A.Arm, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.node, self.hint = message, node, hint


def cedar_string(text: str) -> str:
    """A Cedar string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out.replace("\t", "\\t").replace("\0", "\\0") + '"'


def dotted(expr: A.Expr) -> str | None:
    """``a.b.c`` for a chain of names (``Name``/``Member``), else None."""
    parts: list[str] = []
    while isinstance(expr, A.Member):
        parts.append(expr.name)
        expr = expr.obj
    if not isinstance(expr, A.Name):
        return None
    parts.append(expr.id)
    return ".".join(reversed(parts))


@dataclass(frozen=True)
class Target:
    """What a rule is about: one or more actions and optionally one resource."""

    actions: tuple[str, ...]
    resource_type: str | None = None
    resource_id: str | None = None


def _one_target(expr: A.Expr) -> Target:
    if isinstance(expr, A.Literal_) and expr.kind == "string":
        name: str | None = str(expr.value)
        args: tuple[A.Expr, ...] = ()
    elif isinstance(expr, A.Call):
        name, args = dotted(expr.func), _positional(expr)
    else:
        name, args = dotted(expr), ()
    if name is None or not _ACTION_RE.match(name):
        raise _Bad(
            'a rule names an action like tool.invoke or data.read("reports")',
            expr,
            "write the action as dotted lowercase names, optionally with the resource in parentheses",
        )
    if not args:
        return Target((name,))
    if len(args) > 1:
        raise _Bad(f"{name}(…) takes one resource, got {len(args)}", expr)
    arg = args[0]
    if not (isinstance(arg, A.Literal_) and arg.kind == "string"):
        raise _Bad("the resource is a string: the id of the tool, data set, channel …", arg)
    prefix = name.split(".", 1)[0]
    if prefix not in RESOURCE_TYPES:
        raise _Bad(
            f"cannot tell which kind of resource {name} acts on",
            expr,
            f"actions with a resource start with one of: {', '.join(sorted(RESOURCE_TYPES))}",
        )
    rid = str(arg.value)
    return Target((name,), RESOURCE_TYPES[prefix], None if rid == "*" else rid)


def _positional(call: A.Call) -> tuple[A.Expr, ...]:
    """A call's arguments, which in a policy are all positional."""
    for arg in call.args:
        if isinstance(arg, A.NamedArg):
            raise _Bad(f"a named argument ({arg.name} = …) has no meaning in a policy", call)
    return tuple(a for a in call.args if not isinstance(a, A.NamedArg))


def target(expr: A.Expr) -> Target:
    """The actions/resource a rule's expression names (an array names several actions)."""
    if isinstance(expr, A.Array):
        if not expr.items:
            raise _Bad("an empty list names no action", expr)
        targets = [_one_target(e) for e in expr.items]
        if any(t.resource_type for t in targets):
            raise _Bad("a list of actions cannot name resources; write one rule per resource", expr)
        return Target(tuple(a for t in targets for a in t.actions))
    return _one_target(expr)


class _Condition:
    """Translates a DSL condition to a Cedar expression."""

    def expr(self, e: A.Expr) -> str:
        match e:
            case A.Literal_(kind="string"):
                return cedar_string(str(e.value))
            case A.Literal_(kind="int"):
                return str(e.value)
            case A.Literal_(kind="bool"):
                return "true" if e.value else "false"
            case A.Literal_(kind="float"):
                raise _Bad("Cedar has no fractional numbers", e, "compare with whole numbers")
            case A.Literal_():
                raise _Bad("Cedar has no null", e, "test for an attribute with has(context.x)")
            case A.Quantity():
                if e.value != int(e.value):
                    raise _Bad("this quantity is not a whole number of seconds/bytes", e)
                return str(int(e.value))
            case A.Name() | A.Member():
                path = dotted(e)
                if path is None or path.split(".")[0] not in ROOTS:
                    raise _Bad(
                        f"unknown name {path or '(expression)'!r} in a policy condition",
                        e,
                        "conditions read principal.<attr>, resource.<attr> or context.<attr>",
                    )
                return path
            case A.Array():
                return "[" + ", ".join(self.expr(i) for i in e.items) + "]"
            case A.Record():
                return "{" + ", ".join(f"{cedar_string(k)}: {self.expr(v)}" for k, v in e.fields) + "}"
            case A.Unary(op="!"):
                return f"!({self.expr(e.operand)})"
            case A.Unary():
                return f"-({self.expr(e.operand)})"
            case A.Binary(op="&&" | "||"):
                return f"({self.expr(e.left)} {e.op} {self.expr(e.right)})"
            case A.Binary(op="in"):
                return self._guarded([e.left, e.right], f"{self.expr(e.right)}.contains({self.expr(e.left)})")
            case A.Binary(op=op) if op in _CMP:
                return self._guarded([e.left, e.right], f"{self.expr(e.left)} {op} {self.expr(e.right)}")
            case A.Binary(op="+" | "-" | "*"):
                return f"({self.expr(e.left)} {e.op} {self.expr(e.right)})"
            case A.Call():
                return self._call(e)
        raise _Bad("this expression has no Cedar equivalent in a policy condition", e)

    def _call(self, e: A.Call) -> str:
        args = _positional(e)
        if isinstance(e.func, A.Name) and e.func.id == "has" and len(args) == 1:
            path = dotted(args[0])
            if path is None or "." not in path or path.split(".")[0] not in ROOTS:
                raise _Bad("has() takes an attribute like context.purpose", e)
            guards = self._guards(path)
            return "(" + " && ".join(guards) + ")"
        if isinstance(e.func, A.Member) and e.func.name in _METHODS:
            obj = self.expr(e.func.obj)
            text = ", ".join(self.expr(a) for a in args)
            return self._guarded([e.func.obj, *args], f"{obj}.{e.func.name}({text})")
        if isinstance(e.func, A.Member) and e.func.name == "like" and len(args) == 1:
            pattern = args[0]
            if not (isinstance(pattern, A.Literal_) and pattern.kind == "string"):
                raise _Bad('like() takes a string pattern such as "*.csv"', pattern)
            return self._guarded([e.func.obj], f"{self.expr(e.func.obj)} like {cedar_string(str(pattern.value))}")
        raise _Bad(
            "unknown function in a policy condition",
            e,
            'conditions may call has(x), x.contains(y), x.containsAll(ys), x.containsAny(ys), x.like("pat*")',
        )

    @staticmethod
    def _guards(path: str) -> list[str]:
        parts = path.split(".")
        return [f"{'.'.join(parts[:i])} has {parts[i]}" for i in range(1, len(parts))]

    def _paths(self, e: A.Expr, out: list[str]) -> None:
        path = dotted(e) if isinstance(e, A.Name | A.Member) else None
        if path is not None:
            out.append(path)
        elif isinstance(e, A.Array):
            for item in e.items:
                self._paths(item, out)

    def _guarded(self, operands: list[A.Expr], text: str) -> str:
        paths: list[str] = []
        for operand in operands:
            self._paths(operand, paths)
        guards: list[str] = []
        for path in paths:
            for guard in self._guards(path):
                if guard not in guards:
                    guards.append(guard)
        return "(" + " && ".join([*guards, text]) + ")"


def _annotation_value(kind: str, params: A.Expr | None, call: A.Call) -> str:
    if kind in ("approval", "log_full"):
        if params is not None:
            raise _Bad(f"{kind}() takes only the action", call)
        return "true"
    if params is None:
        raise _Bad(f"{kind}() needs a second argument", call, _REQUIRE_HINT)
    if kind == "redact":
        if not isinstance(params, A.Array) or not params.items:
            raise _Bad("redact() takes the fields to remove as a list of strings", params)
        fields: list[str] = []
        for item in params.items:
            if not (isinstance(item, A.Literal_) and item.kind == "string") or not re.fullmatch(
                r"[A-Za-z_][A-Za-z0-9_.]*", str(item.value)
            ):
                raise _Bad('a field to redact is a string like "ssn" or "patient.dob"', item)
            fields.append(str(item.value))
        return ",".join(fields)
    if not isinstance(params, A.Record) or not params.fields:
        raise _Bad("cap_resources() takes a record like {memory_mb: 512, cpu_cores: 1}", params)
    caps: list[str] = []
    for key, value in params.fields:
        if key not in CAP_KEYS:
            raise _Bad(f"unknown resource {key!r}", params, f"one of {', '.join(CAP_KEYS)}")
        if not (isinstance(value, A.Literal_) and value.kind in ("int", "float")) or float(value.value or 0) <= 0:
            raise _Bad(f"{key} must be a positive number", value)
        caps.append(f"{key}={value.value}")
    return ",".join(caps)


_REQUIRE_HINT = (
    'write require: approval(action), redact(action, ["field", …]), '
    "cap_resources(action, {memory_mb: 512, cpu_cores: 1}) or log_full(action)"
)


def rule_to_cedar(rule: A.Rule, policy_id: str, principal: str, source: str) -> str:
    """One rule as one Cedar policy; raises :class:`_Bad` for what has no Cedar meaning."""
    annotations = [f"@id({cedar_string(policy_id)})"]
    expr = rule.action
    if rule.kind == "require":
        if not (isinstance(expr, A.Call) and isinstance(expr.func, A.Name) and expr.func.id in CONDITION_FUNCTIONS):
            raise _Bad("require: says which condition applies", expr, _REQUIRE_HINT)
        args = _positional(expr)
        if not 1 <= len(args) <= 2:
            raise _Bad(f"{expr.func.id}() takes the action and at most one more argument", expr, _REQUIRE_HINT)
        kind = expr.func.id
        value = _annotation_value(kind, args[1] if len(args) == 2 else None, expr)
        key = "require_approval" if kind == "approval" else kind
        annotations.append(f"@{key}({cedar_string(value)})")
        expr = args[0]
    elif rule.kind == "audit":
        annotations.append('@log_full("true")')
    elif rule.kind == "deny":
        annotations.append(f"@reason({cedar_string(source)})")
    t = target(expr)
    if len(t.actions) == 1:
        action = f"action == Action::{cedar_string(t.actions[0])}"
    else:
        action = "action in [" + ", ".join(f"Action::{cedar_string(a)}" for a in t.actions) + "]"
    if t.resource_type is None:
        resource = "resource"
    elif t.resource_id is None:
        resource = f"resource is {t.resource_type}"
    else:
        resource = f"resource == {t.resource_type}::{cedar_string(t.resource_id)}"
    effect = "forbid" if rule.kind == "deny" else "permit"
    text = "\n".join(annotations) + f"\n{effect} (principal == {principal}, {action}, {resource})"
    if rule.condition is not None:
        text += f"\nwhen {{ {_Condition().expr(rule.condition)} }}"
    return text + ";"


@cache
def _schema() -> Any:
    """The policy service's Cedar schema, parsed once (None where it is not installed)."""
    import cedarpy

    try:
        text = resources.files("symbi_common.policy").joinpath("schema.cedarschema").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return cedarpy.Schema.from_str(text)


def compile_policy(
    policy: A.Policy, *, agent_id: str, reporter: Reporter, describe: str
) -> tuple[str, list[str]] | None:
    """The Cedar text of ``policy`` for agent ``agent_id`` and the ids of its policies.

    A rule with no Cedar meaning (Symbiont accepts any expression) is a warning (code ``policy``, refused at
    registration: Symbi does not enforce it) and is left out; None only when no rule compiles."""
    import cedarpy

    principal = f"Agent::{cedar_string(agent_id)}"
    texts: list[str] = []
    ids: list[str] = []
    ok = True
    schema = _schema()
    for n, rule in enumerate(policy.rules, start=1):
        pid = f"{agent_id}.{policy.name}.{n}"
        source = f"{describe} {policy.name}: {rule_text(rule)}"
        try:
            text = rule_to_cedar(rule, pid, principal, source)
        except _Bad as bad:
            message = f"{bad.message}: this rule is not enforced"
            reporter.warn("policy", message, getattr(bad.node, "span", rule.span), bad.hint)
            continue
        shape = shape_problem(text)  # before cedarpy parses it: too deep a condition would crash its parser
        if shape is not None:
            reporter.error("policy", f"the compiled Cedar is too large to check: {shape[0]}", rule.span)
            ok = False
            continue
        try:
            cedarpy.policies_to_json_str(text)
        except ValueError as err:  # pragma: no cover - the translation emits valid Cedar
            reporter.error("policy", f"the compiled Cedar does not parse: {err}", rule.span)
            ok = False
            continue
        if schema is not None:
            result = cedarpy.validate_policies(text, schema)
            if not result.validation_passed:
                message = "; ".join(e.error for e in result.errors)
                reporter.warn(
                    "policy",
                    f"the rule does not fit the policy schema: {message}; it is not enforced",
                    rule.span,
                    "check the action name and the resource kind against symbi_common/policy/schema.cedarschema",
                )
                continue
        texts.append(text)
        ids.append(pid)
    return ("\n\n".join(texts), ids) if ok and texts else None
