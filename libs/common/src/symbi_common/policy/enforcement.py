"""Enforcement points: where a decision is received, and the conditions each one can enforce.

An allow may carry conditions (:mod:`symbi_common.policy.conditions`). A condition is only worth
something if the code that performs the action honours it, so every place that gates an action on a
decision is an :class:`EnforcementPoint` naming the condition kinds it enforces (and, for
``cap_resources``, which resources it can cap). The :class:`~symbi_common.policy.hooks.Enforcer` checks
each allow against the point that received it: a condition the point cannot enforce turns the allow
into a denial with code ``unenforceable_condition`` — an obligation is never dropped silently.

The points wired in the services are listed here (and in ``docs/policy.md``) so the set of conditions
each honours is visible in one place; a service that adds an enforcement point adds it here. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from symbi_common.caps import CAPPED_RESOURCES
from symbi_common.decisions import AllowWithConditions, Condition, ConditionKind, Decision, Deny

#: Resources a ``cap_resources`` condition may name (the schema's ``resources`` record).
ALL_CAPS = frozenset(CAPPED_RESOURCES)


@dataclass(frozen=True, slots=True)
class EnforcementPoint:
    """One place that gates actions on decisions, and the conditions it enforces.

    ``actions`` documents what it asks about; ``conditions`` are the kinds it honours; ``caps`` the
    resources it can lower when a ``cap_resources`` condition names them (any other is unenforceable).
    """

    name: str
    actions: frozenset[str] = frozenset()
    conditions: frozenset[ConditionKind] = frozenset()
    caps: frozenset[str] = frozenset()

    def unenforceable(self, conditions: Sequence[Condition]) -> list[str]:
        """The conditions of ``conditions`` this point cannot enforce, described (empty: all enforced)."""
        out: list[str] = []
        for c in conditions:
            where = f" (policy {c.policy})" if c.policy else ""
            if c.kind not in self.conditions:
                out.append(f"{c.kind}{where}")
            elif c.kind == "cap_resources":
                extra = sorted(set(c.params) - self.caps)
                if extra:
                    out.append(f"cap_resources of {', '.join(extra)}{where}")
        return out

    def check(self, decision: Decision) -> Decision:
        """``decision`` if this point can enforce all its conditions, else a denial saying which it cannot."""
        if not isinstance(decision, AllowWithConditions):
            return decision
        unmet = self.unenforceable(decision.conditions)
        if not unmet:
            return decision
        return Deny(
            reason=f"unenforceable condition: {self.name} cannot enforce {'; '.join(unmet)}",
            policies=decision.policies,
            policy_version=decision.policy_version,
            code="unenforceable_condition",
        )


#: A point that names no conditions: any condition is unenforceable there (the safe default).
UNSPECIFIED = EnforcementPoint("unspecified")

# --- the enforcement points of the services -------------------------------------------------------

#: lifecycle: registering / reconfiguring an agent. Caps lower the agent's resource limits; an approval
#: is enforced by refusing (registrations and configuration changes have no approval workflow).
LIFECYCLE_AGENT_CONFIG = EnforcementPoint(
    "lifecycle.agent_config",
    actions=frozenset({"agent.register", "agent.configure"}),
    conditions=frozenset({"cap_resources", "require_approval"}),
    caps=ALL_CAPS,
)
#: scheduler: placing a task on a host. Caps lower the limits the task is assigned with.
SCHEDULER_TASK_ALLOCATE = EnforcementPoint(
    "scheduler.task_allocate",
    actions=frozenset({"task.allocate"}),
    conditions=frozenset({"cap_resources"}),
    caps=frozenset({"memory_mb", "cpu_cores", "execution_timeout_s"}),
)
#: sandbox-agent: starting a task's container. Caps lower the container's limits; ``log_full`` holds
#: because the sandbox stores the whole start (spec, limits, hardening) and every output in events.
SANDBOX_START = EnforcementPoint(
    "sandbox-agent.sandbox_start",
    actions=frozenset({"sandbox.start"}),
    conditions=frozenset({"cap_resources", "log_full"}),
    caps=frozenset({"memory_mb", "cpu_cores", "disk_io_mbps", "execution_timeout_s"}),
)
#: sandbox-agent: mounting a filesystem grant of the agent's definition into its sandbox (``data.read`` for
#: every grant, ``data.write`` too for a writable one; resource ``Data::"<data root>"``, context ``access``
#: ``mount`` and ``path``). No condition is enforced there: once mounted, the sandbox reads and writes
#: without asking, so nothing can be redacted, logged in full or approved per access — an allow with such
#: a condition denies the mount (the agent can still use ``data.read`` / ``data.write`` over its gateway).
SANDBOX_DATA_MOUNT = EnforcementPoint(
    "sandbox-agent.data_mount", actions=frozenset({"data.read", "data.write"}), conditions=frozenset()
)
#: sandbox-agent: giving a secret the agent's definition names to its sandbox, as a file on tmpfs
#: (``secret.read`` on ``Secret::"<name>"``, docs/secrets.md). No condition is enforced there.
SANDBOX_SECRET_FILE = EnforcementPoint("sandbox-agent.secret_file", actions=frozenset({"secret.read"}))
#: sandbox-agent action gateway, ``memory.read`` of a workload: ``redact`` masks the named fields in
#: what is returned to the workload.
GATEWAY_READ = EnforcementPoint(
    "sandbox-agent.gateway_read", actions=frozenset({"memory.read"}), conditions=frozenset({"redact"})
)
#: sandbox-agent action gateway, every other action a workload asks for: no condition is enforced there.
GATEWAY_ACTION = EnforcementPoint(
    "sandbox-agent.gateway_action",
    actions=frozenset({"memory.write", "tool.invoke", "data.read", "data.write"}),
)
#: sandbox-agent bus: an agent's ``message.send`` (direct, topic, request; and each delivery decided again).
#: Caps lower the sender's limits for that message: its send rates and the largest body (docs/bus.md).
BUS_SEND = EnforcementPoint(
    "sandbox-agent.bus_send",
    actions=frozenset({"message.send"}),
    conditions=frozenset({"cap_resources"}),
    caps=frozenset({"messages_per_s", "bytes_per_s", "max_message_bytes"}),
)
#: sandbox-agent egress proxy: each connection of a sandbox (``network.connect`` on ``Endpoint::"host:port"``,
#: docs/network.md). No condition is enforced there: a connection is carried or refused whole.
SANDBOX_EGRESS = EnforcementPoint("sandbox-agent.egress", actions=frozenset({"network.connect"}))
#: context: storing memories. ``log_full`` holds: the event stores every memory in full (encrypted).
CONTEXT_MEMORY_WRITE = EnforcementPoint(
    "context.memory_write", actions=frozenset({"memory.write"}), conditions=frozenset({"log_full"})
)
#: context: reading memories / knowledge bases. No condition is enforced there.
CONTEXT_MEMORY_READ = EnforcementPoint("context.memory_read", actions=frozenset({"memory.read"}))
#: audit: event details (payloads) in queries. ``redact`` masks the named fields in each payload returned.
AUDIT_EVENT_DETAILS = EnforcementPoint(
    "audit.event_details", actions=frozenset({"data.read"}), conditions=frozenset({"redact"})
)
#: audit: crypto-shredding an aggregate. No condition is enforced there.
AUDIT_ERASE = EnforcementPoint("audit.erase", actions=frozenset({"data.write"}))

#: Operator requests on the services' HTTP APIs (Cedar on operator role, action, resource): no condition
#: is enforced there.
HTTP_API = EnforcementPoint("http.api")

#: Every enforcement point wired in the services (for docs and tests).
POINTS: tuple[EnforcementPoint, ...] = (
    HTTP_API,
    LIFECYCLE_AGENT_CONFIG,
    SCHEDULER_TASK_ALLOCATE,
    SANDBOX_START,
    SANDBOX_DATA_MOUNT,
    SANDBOX_SECRET_FILE,
    GATEWAY_READ,
    GATEWAY_ACTION,
    BUS_SEND,
    SANDBOX_EGRESS,
    CONTEXT_MEMORY_WRITE,
    CONTEXT_MEMORY_READ,
    AUDIT_EVENT_DETAILS,
    AUDIT_ERASE,
)
