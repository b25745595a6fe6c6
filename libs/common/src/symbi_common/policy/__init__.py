"""Policy enforcement inside every service: the decision points behind ``[policy] enforcement``.

- ``embedded`` (default): an :class:`EmbeddedDecisionPoint` that follows the policy events in-process;
- ``remote``: a :class:`RemoteDecisionPoint` asking the policy service over ``cmd.policy.decide``;
- ``allow-all``: enforcement explicitly off (every decision record says ``enforcement-disabled``).

Either real point carries the process's :class:`DecisionLog`; :class:`Enforcer` (in :mod:`.hooks`) is
what services call to gate an action — every enforcement point (:mod:`.enforcement`) decides through it,
so every decision is checked against the point's conditions and logged. ``docs/policy.md`` has the rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use (below): importing this package must load no I/O module
    from symbi_common.policy.decision_log import DecisionLog
    from symbi_common.policy.enforcement import EnforcementPoint
    from symbi_common.policy.follower import PolicyFollower
    from symbi_common.policy.hooks import Enforcer, Verdict
    from symbi_common.policy.points import EmbeddedDecisionPoint, RemoteDecisionPoint
    from symbi_common.policy.wiring import open_decision_point

__all__ = [
    "DecisionLog",
    "EmbeddedDecisionPoint",
    "EnforcementPoint",
    "Enforcer",
    "PolicyFollower",
    "RemoteDecisionPoint",
    "Verdict",
    "open_decision_point",
]

_HOMES = {
    "DecisionLog": "decision_log",
    "EmbeddedDecisionPoint": "points",
    "EnforcementPoint": "enforcement",
    "Enforcer": "hooks",
    "PolicyFollower": "follower",
    "RemoteDecisionPoint": "points",
    "Verdict": "hooks",
    "open_decision_point": "wiring",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
