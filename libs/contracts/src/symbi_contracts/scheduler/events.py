"""The ``task.<task_id>`` events the scheduler writes (subject ``evt.task.<task_id>``).

Readers: the sandbox-agents (what to run, where, with which limits: ``task.assigned``; whether it still should
run), the context service (``task.completed`` clears the task's working memory), the audit service and the
CLI. Decode them with :data:`CODEC` (docs/contracts/tasks.md is the prose contract). Evolve an event only by
adding fields with defaults; anything else needs a new ``schema_version`` and an upcaster
(see :mod:`symbi_common.events`).
"""

from __future__ import annotations

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_common.events import Event, EventCodec

from symbi_contracts.lifecycle.config import AgentBudget, Messaging, PathAccess, ResourceLimits, Workload
from symbi_contracts.tools.declarations import McpServerSpec

AGGREGATE_TYPE = "task"
#: The most input one task may carry (``task.submitted``), also for a schedule's input (its tasks' input).
MAX_INPUT_BYTES = 192 * 1024


class ResourceRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one task asks for, instead of its agent's configured limits (each at most the agent's)."""

    cpu_cores: float | None = None
    memory_mb: int | None = None
    execution_timeout_s: float | None = None


class TaskSubmitted(Event, frozen=True, tag="task.submitted"):
    """A task entered the queue. ``schedule`` names the agent's schedule that fired it, if any."""

    agent_id: str
    input: bytes
    priority: str
    resources: ResourceRequest | None = None
    submitted_by: str = ""
    schedule: str = ""


class TaskAssigned(Event, frozen=True, tag="task.assigned"):
    """The task was placed on a host; the sandbox-agent of ``host_id`` runs attempt ``attempt``."""

    host_id: str
    tier: str
    risk_score: float
    risk_factors: dict[str, float]
    workload: Workload
    limits: ResourceLimits
    attempt: int
    decision: DecisionRecord
    network_access: tuple[str, ...] = ()
    """The definition's network allow-list; empty: the sandbox gets no network."""
    risk_reason: str = ""
    filesystem_access: tuple[PathAccess, ...] = ()
    """The definition's filesystem grants: the sandbox-agent mounts them from its data roots (docs/grants.md)."""
    tenant: str = "default"
    """The agent's tenant (per-tenant budgets count it)."""
    budget: AgentBudget = msgspec.field(default_factory=AgentBudget)
    """The agent's own model budget (the model gateway reads it from here: docs/models.md)."""
    secrets: tuple[str, ...] = ()
    """The definition's secrets (names, never values): files in the sandbox when policy allows (docs/secrets.md)."""
    messaging: Messaging | None = None
    """The definition's bus limits and subscriptions (docs/bus.md); none: the host's defaults."""
    mcp_servers: tuple[McpServerSpec, ...] = ()
    """The definition's MCP servers: the sandbox-agent registers them before the task starts (docs/tools.md)."""


class TaskPreempted(Event, frozen=True, tag="task.preempted"):
    """The attempt was stopped and the task went back to the queue (``requeued``).

    ``reason`` is ``preempted`` (evicted for ``by_task``) or ``host_lost`` (its host stopped heartbeating).
    """

    host_id: str
    attempt: int
    reason: str
    by_task: str = ""
    requeued: bool = True


class TaskSuspended(Event, frozen=True, tag="task.suspended"):
    """The task stopped without leaving its place.

    ``reason`` ``preempted``: paused in place on ``host_id`` for ``by_task`` (its memory stays reserved).
    ``reason`` ``agent_suspended``: paused in place because its agent was suspended while it ran.
    ``reason`` ``action_denied``: the policy denied a request of the running workload (``decision``); the
    sandbox froze it already and the agent is suspended.
    ``reason`` ``policy_denied``: ``task.allocate`` was denied (``decision``); the agent is suspended too.
    """

    reason: str
    attempt: int
    host_id: str = ""
    by_task: str = ""
    decision: DecisionRecord | None = None


class TaskResumed(Event, frozen=True, tag="task.resumed"):
    """A paused task runs again on its host, or a denied task goes back to the queue."""

    reason: str
    attempt: int
    host_id: str = ""


class TaskCompleted(Event, frozen=True, tag="task.completed"):
    """The task ended; appended after the terminal execution event, before the capacity is freed."""

    outcome: str
    attempt: int
    host_id: str = ""
    exit_code: int | None = None
    detail: str = ""
    code: str = ""
    """For a refusal by the scheduler, why: ``quota_exceeded`` (``detail`` names the quota and its use)."""
    decision: DecisionRecord | None = None
    """The decision that refused it, if one did."""


class TaskCancelled(Event, frozen=True, tag="task.cancelled"):
    """The task was withdrawn (by a person, or because its agent was terminated); for a placed task, once its
    attempt was refused on its host because of a ``task.stop_requested`` (``cancelled``): it never ran."""

    reason: str
    cancelled_by: str = ""


#: ``task.stop_requested`` reasons: the task is withdrawn, or evicted to make room for critical work.
STOP_REASONS = ("cancelled", "preempted")
#: The ``code`` of the ``execution.refused`` a sandbox-agent records for an attempt it did not start because the
#: task has a ``task.stop_requested`` for it.
STOP_REFUSED = "stop_requested"


class TaskStopRequested(Event, frozen=True, tag="task.stop_requested"):
    """Attempt ``attempt`` of the placed task must stop, recorded before its host ``host_id`` is asked to stop it.

    The sandbox-agent never starts an attempt with such a request (it records ``execution.refused``, code
    ``stop_requested``); one that runs is terminated. The task keeps its place until the attempt's end is
    reported, then ``reason`` ``cancelled`` (asked by ``requested_by``, why in ``detail``) ends it —
    ``task.completed`` as the run ended (``killed``), or ``task.cancelled`` if it never started — and
    ``preempted`` (for ``by_task``) sends it back to the queue (``task.preempted``).
    """

    attempt: int
    host_id: str
    reason: str
    requested_by: str = ""
    detail: str = ""
    by_task: str = ""


TaskEvent = (
    TaskSubmitted
    | TaskAssigned
    | TaskPreempted
    | TaskSuspended
    | TaskResumed
    | TaskCompleted
    | TaskCancelled
    | TaskStopRequested
)
EVENT_TYPES: tuple[type[TaskEvent], ...] = (
    TaskSubmitted,
    TaskAssigned,
    TaskPreempted,
    TaskSuspended,
    TaskResumed,
    TaskCompleted,
    TaskCancelled,
    TaskStopRequested,
)
CODEC: EventCodec[TaskEvent] = EventCodec(EVENT_TYPES)
