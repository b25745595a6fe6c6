"""What-if: which past decisions a proposed policy set would change, before it is activated.

The recorded requests of the decision log are decided twice — by the engine of the active policy sets
and by the same engine with the proposed text in place of (or in addition to) the set — and every
request whose decision differs (effect, deciding policies or conditions) is reported. Pure: the caller
reads the decision log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from symbi_common.decisions import AllowWithConditions, Condition, Decision, DecisionRecord, DecisionRequest, Deny
from symbi_common.policy.cedar import CompiledPolicy, compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_common.policy.events import LoggedDecision

MAX_REPORTED = 200


class WhatIfChange(msgspec.Struct, frozen=True, kw_only=True):
    request: DecisionRequest
    recorded: DecisionRecord
    current: Decision
    proposed: Decision


class WhatIfReport(msgspec.Struct, frozen=True, kw_only=True):
    set_id: str
    policy_version: int
    evaluated: int
    changed: int
    allow_to_deny: int
    deny_to_allow: int
    changes: list[WhatIfChange]
    """At most :data:`MAX_REPORTED` of the changed decisions, oldest first."""


def _key(decision: Decision) -> tuple[str, tuple[str, ...], tuple[Condition, ...]]:
    if isinstance(decision, Deny):
        return ("deny", decision.policies, ())
    conditions = decision.conditions if isinstance(decision, AllowWithConditions) else ()
    return ("allow", decision.policies, conditions)


def what_if(
    active: Mapping[str, Sequence[CompiledPolicy]],
    version: int,
    set_id: str,
    cedar: str | None,
    history: Sequence[LoggedDecision],
) -> WhatIfReport:
    """Compare decisions on ``history`` with and without the proposal (``cedar`` None: the set retired)."""
    proposed_sets = dict(active)
    if cedar is None:
        proposed_sets.pop(set_id, None)
    else:
        proposed_sets[set_id] = compile_policies(set_id, cedar)
    current_engine = PolicyEngine(active, version)
    proposed_engine = PolicyEngine(proposed_sets, version)
    requests = [entry.request for entry in history]
    current = current_engine.decide_batch(requests)
    proposed = proposed_engine.decide_batch(requests)
    changes: list[WhatIfChange] = []
    changed = allow_to_deny = deny_to_allow = 0
    for entry, before, after in zip(history, current, proposed, strict=True):
        if _key(before) == _key(after):
            continue
        changed += 1
        was_denied, is_denied = isinstance(before, Deny), isinstance(after, Deny)
        allow_to_deny += not was_denied and is_denied
        deny_to_allow += was_denied and not is_denied
        if len(changes) < MAX_REPORTED:
            changes.append(WhatIfChange(request=entry.request, recorded=entry.record, current=before, proposed=after))
    return WhatIfReport(
        set_id=set_id,
        policy_version=version,
        evaluated=len(history),
        changed=changed,
        allow_to_deny=allow_to_deny,
        deny_to_allow=deny_to_allow,
        changes=changes,
    )
