"""The policy service's own metrics (decisions are counted by :mod:`symbi_common.policy.observed`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POLICY_SETS = Gauge("symbi_policy_sets", "Policy sets by status (active, retired)", ["status"])
POLICY_VERSION = Gauge("symbi_policy_version", "The policy version decisions are made against")
AGENT_POLICY_SETS = Counter(
    "symbi_policy_agent_sets_total",
    "Agents' own policy sets activated (agent Ready), updated (agent reconfigured), retired (terminated), refused"
    " (their set forbids the agent every action instead) or erased (the agent's events can no longer be read: its"
    " set forbids it every action)",
    ["change"],
)
DECISION_BATCHES = Counter(
    "symbi_policy_decision_batches_total",
    "Decision-log batches taken from DECISIONS: stored (as events) or refused (unreadable, or a forged source)",
    ["outcome"],
)
DECISION_BACKLOG = Gauge("symbi_policy_decision_backlog", "Decision-log batches in DECISIONS not yet stored")
AGENT_EVENTS = "policy_agent_events"
