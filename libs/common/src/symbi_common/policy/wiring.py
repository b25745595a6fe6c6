"""Opening the decision point ``[policy] enforcement`` asks for (I/O: NATS, the policy events)."""

from __future__ import annotations

from typing import Any

from symbi_common.decisions import AllowAll, DecisionPoint
from symbi_common.errors import ConfigError
from symbi_common.policy.decision_log import DecisionLog
from symbi_common.policy.follower import PolicyFollower
from symbi_common.policy.points import EmbeddedDecisionPoint, RemoteDecisionPoint


def _decision_log(runtime: Any) -> DecisionLog | None:
    s = runtime.settings.policy
    if not s.decision_log:
        return None
    decision_log = DecisionLog(
        runtime.js,
        service=runtime.name,
        batch_size=s.log_batch_size,
        interval=s.log_interval_s,
        max_pending=s.log_max_pending,
        timeout=runtime.settings.nats.request_timeout_s,
        spool_dir=runtime.settings.decision_spool_dir(),
    )
    decision_log.start()  # sends at once what stopped processes of this service left in the spool
    return decision_log


async def open_decision_point(runtime: Any) -> DecisionPoint:
    """The decision point ``runtime.settings.policy.enforcement`` asks for, ready to decide."""
    mode = runtime.settings.policy.enforcement
    if mode == "allow-all":
        return AllowAll()
    if mode == "remote":
        remote = RemoteDecisionPoint(runtime.client, _decision_log(runtime))
        # The policy service not answering, or answering that a policy set is halted, makes the service unready.
        runtime.add_health_check("policy-service", lambda: remote.healthy)
        return remote
    if mode == "embedded":
        follower = PolicyFollower(
            runtime.js,
            runtime.registry,
            runtime.datakeys,
            service=runtime.name,
            catch_up_registry=runtime.keys.catch_up,  # a key rotated elsewhere is learnt, not a halted set
        )
        await follower.start(timeout=runtime.settings.policy.startup_timeout_s, spawn=runtime.spawn)
        # A halted policy set (an event that could not be applied) makes the service unready: it denies all.
        runtime.add_health_check("policy-sets", lambda: follower.healthy)
        return EmbeddedDecisionPoint(follower, _decision_log(runtime))
    raise ConfigError(f"unknown enforcement mode {mode!r}", setting="policy.enforcement")
