"""Policy enforcement inside every service: the decision points behind ``[policy] enforcement``."""

from __future__ import annotations

from typing import Any

from symbi_common.decisions import AllowAll, DecisionPoint
from symbi_common.errors import ConfigError


async def open_decision_point(runtime: Any) -> DecisionPoint:
    """The decision point ``runtime.settings.policy.enforcement`` asks for."""
    mode = runtime.settings.policy.enforcement
    if mode == "allow-all":
        return AllowAll()
    raise ConfigError(f"the {mode!r} decision point is not available in this build", setting="policy.enforcement")
