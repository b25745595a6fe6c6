"""The policy engine: every active policy set, combined into one pre-parsed Cedar policy set, and decisions.

Semantics are Cedar's: default deny when no permit applies, and a matching ``forbid`` always wins.
On top of that:

- a ``Deny`` names the forbids that decided it and gives their ``@reason`` annotations as its reason;
- an allow carries the conditions of the permits that granted it (``AllowWithConditions``);
- a forbid that could not be evaluated (an error, e.g. a missing entity) denies: a broken guard must not
  open the door it was written to keep shut. A permit that errors simply does not grant;
- while a policy set is halted (an event of it could not be applied), every decision denies.

Every ``Deny`` carries a typed ``code`` (:data:`symbi_common.decisions.DenyCode`).

An engine is immutable. Followers of the policy events build a new one on each change and swap it in,
so a decision is always made against exactly one policy version.

A decision is a pure function of the engine's policies and the request, so an engine remembers the
decisions it made (bounded): a repeated request is answered without Cedar. The memo lives and dies with
the engine — a changed, added, retired or halted policy set is a new engine with an empty memo. Its key
is everything Cedar can read: principal, action, resource (with their attributes and parents) and those
context attributes some policy of the engine names (``context.x`` / ``context has x``); the context
whole if any policy uses it otherwise. The attributes left out must still be values Cedar takes
(:func:`cedar_expressible`), or the request is decided afresh: Cedar refuses a request over any of its
values, read or not, and the memo must answer exactly as Cedar would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import cedarpy
import msgspec

from symbi_common.decisions import Allow, AllowWithConditions, Condition, Decision, DecisionRequest, Deny, EntityRef
from symbi_common.errors import ValidationError
from symbi_common.policy.cedar import CompiledPolicy, combine, schema
from symbi_common.policy.conditions import conditions_of

_UID_RE = re.compile(r'^([A-Za-z_][A-Za-z0-9_:]*)::"((?:[^"\\]|\\.)*)"\Z')
_ERROR_POLICY = "policy `"
DEFAULT_DENY = "no policy permits it (default deny)"
_json = msgspec.json.Encoder()
#: Stands, among the forbids that could not be evaluated, for an error Cedar reported of no policy known here.
_UNATTRIBUTED = "(unattributed error)"
#: Decisions an engine remembers; the memo starts over when full.
MEMO_SIZE = 4096
_CONTEXT = {"Var": "context"}


def context_attributes(policies: Sequence[CompiledPolicy]) -> frozenset[str] | None:
    """The context attributes ``policies`` can read (``context.x``, ``context has x``); None if one uses
    ``context`` any other way (then all of it counts)."""
    names: set[str] = set()

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            if node == _CONTEXT:
                return False
            for op in (".", "has"):
                inner = node.get(op)
                if isinstance(inner, dict) and inner.get("left") == _CONTEXT and isinstance(inner.get("attr"), str):
                    names.add(inner["attr"])
                    return True
            return all(walk(v) for v in node.values())
        if isinstance(node, list):
            return all(walk(v) for v in node)
        return True

    for p in policies:
        if not walk({k: v for k, v in p.est.items() if k != "annotations"}):
            return None
    return frozenset(names)


def parse_uid(text: str) -> dict[str, str]:
    """``Type::"id"`` as Cedar's JSON entity reference; :class:`ValidationError` if it is not one."""
    m = _UID_RE.match(text)
    if m is None:
        raise ValidationError(f'{text!r} is not an entity reference like Agent::"a1"', field="parents")
    return {"type": m.group(1), "id": m.group(2).replace('\\"', '"')}


def cedar_value(value: Any) -> Any:
    """A request value in Cedar's JSON form: sets for lists, records for dicts, decimals for floats."""
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
    if isinstance(value, Mapping):
        return {str(k): cedar_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [cedar_value(v) for v in value]
    if value is None:
        raise ValidationError("null is not a Cedar value; leave the attribute out", field="attrs")
    raise ValidationError(f"{type(value).__name__} is not a Cedar value", field="attrs")


#: Cedar's ``Long`` and ``decimal`` ranges (a decimal is a Long of ten-thousandths); floats are kept well inside.
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_DECIMAL_SAFE = 9e14


def cedar_expressible(value: Any) -> bool:
    """Whether Cedar surely takes ``value`` (as :func:`cedar_value` writes it) in a request; False when unsure.

    Sound, not complete: True only for values Cedar evaluates; a False merely costs a memo miss."""
    if isinstance(value, bool):
        return True
    if isinstance(value, str):
        return value.isascii() or _utf8(value)
    if isinstance(value, int):
        return _LONG_MIN <= value <= _LONG_MAX
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) < _DECIMAL_SAFE
    if isinstance(value, Mapping):  # keys such as "__extn" or "__entity" mean something to Cedar: not sure then
        return all(isinstance(k, str) and not k.startswith("__") and cedar_expressible(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return all(cedar_expressible(v) for v in value)
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _entity(ref: EntityRef) -> dict[str, Any]:
    return {
        "uid": {"type": ref.type, "id": ref.id},
        "attrs": {k: cedar_value(v) for k, v in ref.attrs.items()},
        "parents": [parse_uid(p) for p in ref.parents],
    }


#: Fields of the ``resources`` record the schema types as decimals: a whole number sent for one is one too.
DECIMAL_RESOURCES = ("cpu_cores", "execution_timeout_s")


def _context(context: Mapping[str, Any]) -> dict[str, Any]:
    resources = context.get("resources")
    if isinstance(resources, Mapping) and any(isinstance(resources.get(k), int) for k in DECIMAL_RESOURCES):
        fixed = {k: float(v) if k in DECIMAL_RESOURCES and isinstance(v, int) else v for k, v in resources.items()}
        context = {**context, "resources": fixed}
    return {k: cedar_value(v) for k, v in context.items()}


def cedar_request(request: DecisionRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``cedarpy`` request and entities of one :class:`DecisionRequest`."""
    p, r = request.principal, request.resource
    entities = [_entity(p)] if (p.type, p.id) == (r.type, r.id) else [_entity(p), _entity(r)]
    cedar = {
        "principal": {"type": p.type, "id": p.id},
        "action": {"type": "Action", "id": request.action},
        "resource": {"type": r.type, "id": r.id},
        "context": _json.encode(_context(request.context)).decode(),  # as JSON text: cedarpy passes it through
    }
    return cedar, entities


@cache
def _no_policies() -> cedarpy.PolicySet:
    return cedarpy.PolicySet.from_str("")


def schema_errors(request: DecisionRequest) -> str | None:
    """Why the Cedar schema rejects ``request`` (an unknown context attribute, a wrong type), or None.

    For an enforcement point that refuses a malformed request with a clear reason before deciding it (the
    policies would only ever see it as an evaluation error). It never allows anything: no policy is
    consulted. :class:`ValidationError` if the request cannot be expressed in Cedar at all."""
    cedar, entities = cedar_request(request)
    result = cedarpy.is_authorized(cedar, _no_policies(), _json.encode(entities).decode(), schema=schema())
    if result.decision == cedarpy.Decision.NoDecision:
        return "; ".join(result.diagnostics.errors) or "no decision"
    return None


class PolicyEngine:
    """Decisions against one version of the active policy sets."""

    def __init__(
        self, sets: Mapping[str, Sequence[CompiledPolicy]], version: int, *, halted: Mapping[str, str] | None = None
    ) -> None:
        self.version = version
        #: Policy sets stopped by an event that could not be applied (set id -> why): while any is, every
        #: decision denies (``policy_halted``) — the engine cannot know what the stopped set would forbid.
        self.halted = dict(halted or {})
        self.set_ids = tuple(sorted(sets))
        self._policies = {p.internal_id: p for policies in sets.values() for p in policies}
        self._conditions = {
            p.internal_id: conditions_of(p.annotations, p.name) for p in self._policies.values() if p.effect == "permit"
        }
        self._cedar = combine(list(self._policies.values()))
        self._context_attrs = context_attributes(list(self._policies.values()))
        self._memo: dict[bytes, Decision] = {}

    @property
    def cedar_policies(self) -> cedarpy.PolicySet:
        """The combined, pre-parsed policy set (for benchmarks against raw ``cedarpy``)."""
        return self._cedar

    def __len__(self) -> int:
        return len(self._policies)

    def decide(self, request: DecisionRequest) -> Decision:
        if self.halted:
            return self._halted_denial()
        key = self._memo_key(request)
        decision = self._memo.get(key) if key is not None else None
        if decision is None:
            decision = self._decide(request)
            # A request Cedar could not evaluate may be refused for what it carries beyond the key (an unusable
            # attribute no policy names): remembering that denial would refuse valid requests with the same key.
            if key is not None and not (isinstance(decision, Deny) and decision.code == "invalid_request"):
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = decision
        return decision

    def _memo_key(self, request: DecisionRequest) -> bytes | None:
        """Everything of ``request`` the policies can read, as bytes; None if it cannot be encoded."""
        context = request.context
        if self._context_attrs is not None:
            read = self._context_attrs
            # What no policy reads is left out of the key, but Cedar still has to take it: a request carrying an
            # unread value Cedar would refuse (null, a number out of range …) is decided afresh, never remembered.
            if not all(k in read or cedar_expressible(v) for k, v in context.items()):
                return None
            context = {k: v for k, v in context.items() if k in read}
        try:
            return _json.encode((request.principal, request.action, request.resource, context))
        except (TypeError, ValueError):
            return None

    def _decide(self, request: DecisionRequest) -> Decision:
        try:
            cedar, entities = cedar_request(request)
            result = cedarpy.is_authorized(cedar, self._cedar, _json.encode(entities).decode())
        except (ValidationError, ValueError) as exc:  # ValueError: Cedar refused the request or its entities
            return Deny(
                reason=f"the request cannot be evaluated: {exc}", policy_version=self.version, code="invalid_request"
            )
        return self._decision(result)

    def decide_batch(self, requests: Sequence[DecisionRequest]) -> list[Decision]:
        """:meth:`decide` for each request, against this one version.

        One Cedar call per request: ``is_authorized_batch`` takes one entity set for the whole batch, and
        evaluating every request against the union of all entities measured slower than separate calls.
        """
        return [self.decide(r) for r in requests]

    def _halted_denial(self) -> Deny:
        stopped = "; ".join(f"{set_id}: {why}" for set_id, why in sorted(self.halted.items()))
        return Deny(
            reason=f"policy halted until fixed, every request is denied: {stopped}"[:2000],
            policies=tuple(sorted(self.halted)),
            policy_version=self.version,
            code="policy_halted",
        )

    def _erring(self, error: str) -> list[str]:
        """The policies Cedar's ``error`` can be about: every known id after ``policy`` and a backtick, up to a later one
        (an id may itself hold one, so each is tried); none if the error names no policy this engine has."""
        start = error.find(_ERROR_POLICY)
        if start < 0:
            return []
        start += len(_ERROR_POLICY)
        found: list[str] = []
        end = error.find("`", start)
        while end >= 0:
            if error[start:end] in self._policies:
                found.append(error[start:end])
            end = error.find("`", end + 1)
        return found

    def _names(self, ids: Sequence[str]) -> tuple[str, ...]:
        return tuple(self._policies[i].name if i in self._policies else i for i in ids)

    def _decision(self, result: cedarpy.AuthzResult) -> Decision:
        if result.decision == cedarpy.Decision.NoDecision:  # Cedar could not even build the request
            errors = "; ".join(result.diagnostics.errors) or "no decision"
            return Deny(
                reason=f"the request cannot be evaluated: {errors}", policy_version=self.version, code="invalid_request"
            )
        reasons = sorted(result.diagnostics.reasons)  # Cedar reports them in no fixed order
        broken: list[str] = []
        for error in result.diagnostics.errors:
            pids = self._erring(error)
            forbids = [pid for pid in pids if self._policies[pid].effect == "forbid"]
            # An error no policy can be named for might be a forbid's: it denies (fail closed).
            broken.extend(forbids if pids else [_UNATTRIBUTED])
        if result.allowed and not broken:
            conditions: tuple[Condition, ...] = tuple(c for pid in reasons for c in self._conditions.get(pid, ()))
            names = self._names(reasons)
            if conditions:
                return AllowWithConditions(conditions=conditions, policies=names, policy_version=self.version)
            return Allow(policies=names, policy_version=self.version)
        if broken:
            errors = "; ".join(result.diagnostics.errors)
            return Deny(
                reason=f"a forbid policy could not be evaluated, so it denies: {errors}",
                policies=self._names(list(dict.fromkeys(broken))),
                policy_version=self.version,
                code="forbid_error",
            )
        forbids = [pid for pid in reasons if pid in self._policies and self._policies[pid].effect == "forbid"]
        if not forbids:
            return Deny(reason=DEFAULT_DENY, policy_version=self.version, code="default_deny")
        texts = [self._policies[pid].annotations.get("reason", "") for pid in forbids]
        names = self._names(forbids)
        reason = "; ".join(t for t in texts if t) or f"forbidden by {', '.join(names)}"
        return Deny(reason=reason, policies=names, policy_version=self.version, code="forbidden")


EMPTY = PolicyEngine({}, 0)
