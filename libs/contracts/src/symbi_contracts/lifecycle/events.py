"""The ``agent.<agent_id>`` events the lifecycle service writes (subject ``evt.agent.<agent_id>``) and the
agent states they move between.

Readers: the scheduler (which agents are Ready and with what configuration), the policy service (the
agents' own policies), the audit service (every event). Decode them with :data:`CODEC`. Evolve an event
only by adding fields with defaults; a change old events cannot decode into needs a new
``schema_version`` and an upcaster (see :mod:`symbi_common.events`).
"""

from __future__ import annotations

import enum

from symbi_common.decisions import DecisionRecord
from symbi_common.events import Event, EventCodec

from symbi_contracts.lifecycle.config import AgentConfig, ConfigIssue

AGGREGATE_TYPE = "agent"


class AgentStatus(enum.StrEnum):
    """The lifecycle states of an agent."""

    INITIALIZING = "Initializing"
    READY = "Ready"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    TERMINATED = "Terminated"
    FAILED = "Failed"


class AgentRegistered(Event, frozen=True, tag="agent.registered"):
    """An agent was registered and is Initializing (``definition``: the DSL text it was registered with)."""

    agent_id: str
    config: AgentConfig
    definition: str = ""
    source_file: str = ""
    registered_by: str = ""


class AgentReady(Event, frozen=True, tag="agent.ready"):
    """The configuration validated and registration was allowed: Initializing → Ready.

    ``config`` is the final configuration (compiled from the definition, capped by policy conditions);
    ``decision`` is the ``agent.register`` policy decision that allowed it.
    """

    config: AgentConfig | None = None
    decision: DecisionRecord | None = None


class AgentFailed(Event, frozen=True, tag="agent.failed"):
    """The configuration did not validate: Initializing → Failed, with every problem found."""

    errors: tuple[ConfigIssue, ...]
    config: AgentConfig | None = None
    decision: DecisionRecord | None = None


class AgentDenied(Event, frozen=True, tag="agent.denied"):
    """Policy denied the registration: Initializing → Failed; ``decision`` names the deciding policies."""

    decision: DecisionRecord
    errors: tuple[ConfigIssue, ...] = ()


class AgentConfigured(Event, frozen=True, tag="agent.configured"):
    """A Ready or Suspended agent's configuration was replaced (no state change); ``decision`` allowed it."""

    config: AgentConfig
    decision: DecisionRecord | None = None


class AgentConfigureDenied(Event, frozen=True, tag="agent.configure_denied"):
    """Policy denied a configuration change; nothing changed. ``decision`` names the deciding policies."""

    decision: DecisionRecord


class AgentTaskAssigned(Event, frozen=True, tag="agent.task_assigned"):
    """Ready → Running."""

    task_id: str
    description: str = ""


class AgentTaskCompleted(Event, frozen=True, tag="agent.task_completed"):
    """Running → Ready."""

    task_id: str
    outcome: str = "succeeded"


class AgentSuspended(Event, frozen=True, tag="agent.suspended"):
    """Running → Suspended (policy violation)."""

    reason: str
    policy_id: str | None = None


class AgentResumed(Event, frozen=True, tag="agent.resumed"):
    """Suspended → Running (policy cleared)."""

    reason: str = ""


class AgentTerminated(Event, frozen=True, tag="agent.terminated"):
    """Ready, Suspended or Failed → Terminated."""

    reason: str
    previous: AgentStatus


AgentEvent = (
    AgentRegistered
    | AgentReady
    | AgentFailed
    | AgentDenied
    | AgentConfigured
    | AgentConfigureDenied
    | AgentTaskAssigned
    | AgentTaskCompleted
    | AgentSuspended
    | AgentResumed
    | AgentTerminated
)
EVENT_TYPES: tuple[type[AgentEvent], ...] = (
    AgentRegistered,
    AgentReady,
    AgentFailed,
    AgentDenied,
    AgentConfigured,
    AgentConfigureDenied,
    AgentTaskAssigned,
    AgentTaskCompleted,
    AgentSuspended,
    AgentResumed,
    AgentTerminated,
)
CODEC: EventCodec[AgentEvent] = EventCodec(EVENT_TYPES)
