"""Conditions from annotations on ``permit`` policies, and what a caller does to honour them.

A permit may attach obligations to the access it grants, as annotations whose keys are the condition
kinds of :mod:`symbi_common.decisions`::

    @require_approval("true")                      a person must approve before the action happens
    @redact("ssn,dob")                             these fields are removed from what is returned/sent
    @log_full("true")                              the action is logged with its full payload
    @cap_resources("memory_mb=512,cpu_cores=1")    the action may use at most these resources

Annotations are checked when a policy set is registered, so a malformed one never reaches a decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from symbi_common.caps import resource_caps as resource_caps  # the one capping rule lives there
from symbi_common.decisions import Condition, ConditionKind
from symbi_common.errors import ValidationError

CONDITION_KINDS: tuple[ConditionKind, ...] = ("require_approval", "redact", "log_full", "cap_resources")
_TRUE = ("true", "yes", "1", "")
_FALSE = ("false", "no", "0")


class BadCondition(ValidationError):
    """A condition annotation's value cannot be read."""

    code = "bad_condition"


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_condition(kind: ConditionKind, value: str, policy: str) -> Condition | None:
    """The condition one annotation stands for (None for ``"false"``); :class:`BadCondition` if unreadable."""
    field = f"{policy}.@{kind}"
    v = value.strip()
    if kind in ("require_approval", "log_full"):
        if v.lower() in _FALSE:
            return None
        if v.lower() not in _TRUE:
            raise BadCondition(f'must be "true" or "false", got {value!r}', field=field)
        return Condition(kind=kind, policy=policy)
    if kind == "redact":
        fields = [f.strip() for f in v.split(",") if f.strip()]
        if not fields:
            raise BadCondition('must name at least one field, e.g. @redact("ssn,dob")', field=field)
        return Condition(kind=kind, params={"fields": fields}, policy=policy)
    caps: dict[str, Any] = {}
    for part in v.split(","):
        key, sep, amount = part.partition("=")
        if not sep or not key.strip():
            raise BadCondition(f"expected name=number pairs, got {part.strip()!r}", field=field)
        try:
            caps[key.strip()] = _number(amount.strip())
        except ValueError:
            raise BadCondition(f"{key.strip()} must be a number, got {amount.strip()!r}", field=field) from None
    return Condition(kind=kind, params=caps, policy=policy)


def conditions_of(annotations: Mapping[str, str], policy: str) -> tuple[Condition, ...]:
    """Every condition the annotations of one permit policy attach, in a fixed order."""
    out: list[Condition] = []
    for kind in CONDITION_KINDS:
        if kind in annotations:
            cond = parse_condition(kind, annotations[kind], policy)
            if cond is not None:
                out.append(cond)
    return tuple(out)


# --- honouring conditions (used by the callers of the enforcement hooks) -----------------------------


def requires_approval(conditions: Sequence[Condition]) -> bool:
    return any(c.kind == "require_approval" for c in conditions)


def logs_in_full(conditions: Sequence[Condition]) -> bool:
    return any(c.kind == "log_full" for c in conditions)


def redacted_fields(conditions: Sequence[Condition]) -> frozenset[str]:
    return frozenset(f for c in conditions if c.kind == "redact" for f in c.params.get("fields", ()))


def redact(payload: Mapping[str, Any], conditions: Sequence[Condition], mask: str = "[REDACTED]") -> dict[str, Any]:
    """``payload`` with every field a ``redact`` condition names replaced by ``mask`` (nested dicts too)."""
    fields = redacted_fields(conditions)

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: mask if k in fields else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(payload)
    return result


def capped(requested: Mapping[str, int | float], conditions: Sequence[Condition]) -> dict[str, int | float]:
    """``requested`` with every value lowered to its cap."""
    caps = resource_caps(conditions)
    return {k: min(v, caps[k]) if k in caps else v for k, v in requested.items()}
