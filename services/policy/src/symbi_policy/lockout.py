"""The admin-lockout guard: no policy-set change may leave every admin without the HTTP APIs.

Operators reach every HTTP API through a Cedar decision (:mod:`symbi_common.operator_auth`); if the active
policy sets no longer allow an ``Operator`` with role ``admin`` ``api.admin`` on the admin routes, nobody
can change the policy sets over HTTP any more and only the NATS operator credential gets the runtime back.
A register, update or retire whose prospective sets would do that — while the current sets do not — is
refused with :class:`AdminLockout`, unless it says ``force_lockout``. The prospective engine is built the
same way a what-if builds it (:mod:`symbi_policy.whatif`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from symbi_common.decisions import Allow, AllowWithConditions, DecisionRequest
from symbi_common.errors import DomainError, ValidationError
from symbi_common.operator_auth import api_request, route_access
from symbi_common.operator_tokens import OperatorClaims
from symbi_common.policy.cedar import CompiledPolicy, compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_common.policy.follower import PolicyFollower

#: The service and admin route the probe asks about: registering a policy set over HTTP.
PROBE_SERVICE = "policy"
PROBE_METHOD = "POST"
PROBE_PATH = "/v1/policy-sets"


class AdminLockout(ValidationError):
    """The change would leave no admin allowed ``api.admin`` on the HTTP APIs (pass ``force_lockout`` to insist)."""

    code = "admin_lockout"
    http_status = 409

    def __init__(self, message: str) -> None:
        DomainError.__init__(self, message, field="force_lockout")  # the message without ValidationError's prefix
        self.field = "force_lockout"


#: The admin the probe asks for (its token claims; only ``role`` matters to the baseline's permits).
PROBE_ADMIN = OperatorClaims(tid="lockout-probe", sub="lockout-probe", role="admin", iat=0, exp=0, kid="")


def probe_request() -> DecisionRequest:
    """An admin registering a policy set over HTTP, built by :func:`api_request` as :class:`OperatorGuard` builds
    every route's decision."""
    access = route_access(PROBE_METHOD, PROBE_PATH)
    return api_request(PROBE_SERVICE, PROBE_METHOD, PROBE_PATH, access, PROBE_ADMIN, PROBE_PATH)


def admins_allowed(sets: Mapping[str, Sequence[CompiledPolicy]], version: int = 0) -> bool:
    """Whether ``sets`` allow an admin ``api.admin`` on an admin route (an allow with conditions does not
    count: the HTTP APIs enforce none)."""
    return isinstance(PolicyEngine(sets, version).decide(probe_request()), Allow)


def lockout_refusal(
    active: Mapping[str, Sequence[CompiledPolicy]],
    version: int,
    set_id: str,
    proposed: Sequence[CompiledPolicy] | None,
) -> AdminLockout | None:
    """The error to raise if replacing ``set_id`` by ``proposed`` (None: retiring it) locks admins out."""
    if not admins_allowed(active, version):
        return None  # already locked out: this change does not make it so (and may be the way back)
    prospective = dict(active)
    if proposed is None:
        prospective.pop(set_id, None)
    else:
        prospective[set_id] = proposed
    engine = PolicyEngine(prospective, version)
    decision = engine.decide(probe_request())
    if isinstance(decision, Allow):
        return None
    if isinstance(decision, AllowWithConditions):
        why = "allowed only with conditions, which the HTTP APIs do not enforce"
    else:
        why = f"denied by {', '.join(decision.policies)}" if decision.policies else "no policy would permit it"
    change = f"retired {set_id!r}" if proposed is None else f"{set_id!r} with this text"
    return AdminLockout(
        f"this change would lock every admin out of the HTTP APIs: with policy set {change}, an Operator"
        f" with role 'admin' is not allowed api.admin on {PROBE_METHOD} {PROBE_PATH} ({why}); keep a "
        "permit like baseline-operators-admin in an active set, or send force_lockout: true to insist (the NATS "
        "operator credential is then the only way back)"
    )


def guard_lockout(follower: PolicyFollower, set_id: str, cedar: str | None, *, register: bool = False) -> None:
    """:class:`AdminLockout` if registering or updating ``set_id`` to ``cedar`` (None: retiring it) would lock
    admins out, decided on the follower's active sets; a change the domain refuses anyway is left to it."""
    engine = follower.engine
    active = {k: v for k, v in follower.compiled.items() if k in engine.set_ids}
    if (set_id in follower.states) if register else (set_id not in active):
        return  # registering an existing set, or changing one that is not active: refused, or no change
    try:
        proposed = None if cedar is None else compile_policies(set_id, cedar)
    except ValidationError:
        return  # the domain refuses a bad text with its own error (PolicyRejected)
    refusal = lockout_refusal(active, engine.version, set_id, proposed)
    if refusal is not None:
        raise refusal
