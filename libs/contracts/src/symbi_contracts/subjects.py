"""The catalogue of subjects between Symbi's services: what travels where, who writes it and who reads it.

Services talk only through NATS: signed, encrypted events in the ``EVENTS`` stream (``evt.<aggregate>.<id>``),
request/reply commands (``cmd.<service>.<action>``), the ``WORK`` and ``DECISIONS`` queues and the ``HOSTS``
key-value bucket.
Each entry names the owning service (the only writer of an event subject, the server of a command) and the
services that consume it. Event subjects list their event types with their ``schema_version``: taken from the
classes for the types in this package, spelled out for the others (a test checks them against the owners'
codecs). :mod:`symbi_contracts.diagram` draws this catalogue; ``docs/subjects.md`` is its output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import msgspec
from symbi_common.events import Event, tag_of

from symbi_contracts import bus
from symbi_contracts.context import commands as context_commands
from symbi_contracts.lifecycle import commands as lifecycle_commands
from symbi_contracts.lifecycle import events as agent_events
from symbi_contracts.models import events as budget_events
from symbi_contracts.policy import commands as policy_commands
from symbi_contracts.sandbox_agent import commands as sandbox_commands
from symbi_contracts.sandbox_agent import events as execution_events
from symbi_contracts.scheduler import events as task_events
from symbi_contracts.tools import events as tool_events

LIFECYCLE = "lifecycle"
SCHEDULER = "scheduler"
POLICY = "policy"
AUDIT = "audit"
SANDBOX_AGENT = "sandbox-agent"
CONTEXT = "context"
CLI = "cli"
#: Every service; ``cli`` is the operator's command line (it reads events and calls commands, serves nothing).
SERVICES = (LIFECYCLE, SCHEDULER, POLICY, AUDIT, SANDBOX_AGENT, CONTEXT)
#: Every service that decides and enforces policy: embedded (it follows the policy sets) or remote (it asks
#: ``cmd.policy.decide``); it logs its decisions and asks the lifecycle to suspend an agent on a violation.
ENFORCING = (LIFECYCLE, SCHEDULER, AUDIT, SANDBOX_AGENT, CONTEXT)

Kind = Literal["events", "command", "work", "kv", "notice", "message"]


@dataclass(frozen=True, slots=True)
class EventVersion:
    """One event type on a subject and the schema version its writer writes now."""

    type: str
    version: int


@dataclass(frozen=True, slots=True)
class Subject:
    """One subject (or family of subjects) between services."""

    kind: Kind
    subject: str
    """The subject with its variable tokens in angle brackets: ``evt.agent.<agent_id>``."""
    owner: str
    readers: tuple[str, ...]
    what: str
    """What it carries, in a few words."""
    events: tuple[EventVersion, ...] = ()
    bodies: tuple[type[msgspec.Struct], ...] = ()
    """A command's request types, one per action in the order of the subject's ``a|b`` (one for all: the same
    body for every action); the server decodes them strictly (unknown keys, wrong types → a typed error)."""

    @property
    def filter(self) -> str:
        """The NATS filter of the whole family: ``evt.agent.<agent_id>`` → ``evt.agent.>``."""
        head, _, _ = self.subject.partition("<")
        return f"{head}>" if head != self.subject else self.subject


def find(subject_filter: str) -> Subject:
    """The catalogue entry whose family ``subject_filter`` (e.g. ``evt.agent.>``) is."""
    for s in CATALOGUE:
        if s.filter == subject_filter:
            return s
    raise KeyError(f"{subject_filter} is not in the catalogue of subjects")


def versions(types: Iterable[type[Event]]) -> tuple[EventVersion, ...]:
    """The ``(tag, schema_version)`` of each event class."""
    return tuple(EventVersion(tag_of(t), t.schema_version) for t in types)


def _v1(*tags: str) -> tuple[EventVersion, ...]:
    return tuple(EventVersion(tag, 1) for tag in tags)


CATALOGUE: tuple[Subject, ...] = (
    # --- events (stream EVENTS; the audit service verifies and reads every one of them) ---------------
    Subject(
        "events",
        "evt.agent.<agent_id>",
        LIFECYCLE,
        (SCHEDULER, POLICY, AUDIT, CLI),
        "an agent's lifecycle: registration, configuration, states, tasks",
        versions(agent_events.EVENT_TYPES),
    ),
    Subject(
        "events",
        "evt.task.<task_id>",
        SCHEDULER,
        (SANDBOX_AGENT, CONTEXT, AUDIT, CLI),
        "a task: submitted, assigned to a host and tier, paused, completed",
        versions(task_events.EVENT_TYPES),
    ),
    Subject(
        "events",
        "evt.schedule.<agent_id>",
        SCHEDULER,
        (AUDIT,),
        "the firings of an agent's schedules",
        _v1("schedule.fired"),
    ),
    Subject(
        "events",
        "evt.execution.<task_id>",
        SANDBOX_AGENT,
        (SCHEDULER, AUDIT, CLI),
        "a task's run in its sandbox: start, output, actions, pause, end",
        versions(execution_events.EXECUTION_CODEC.types),
    ),
    Subject(
        "events",
        "evt.host.<host_id>",
        SANDBOX_AGENT,
        (AUDIT,),
        "a host's registration and start-up reconciliation",
        versions(execution_events.HOST_CODEC.types),
    ),
    Subject(
        "events",
        "evt.toolserver.<server>",
        SANDBOX_AGENT,
        (AUDIT,),
        "an MCP tool server: registered, each tool's definition seen (pin, flags, SchemaPin), approved, changed, revoked; tier raised; removed",
        versions(tool_events.EVENT_TYPES),
    ),
    Subject(
        "events",
        "evt.budget.<YYYYMMDD>-<tenant>",
        SANDBOX_AGENT,
        (AUDIT,),
        "a tenant's model budgets of one day: each call reserved, reconciled with its usage, or released",
        versions(budget_events.EVENT_TYPES),
    ),
    Subject(
        "events",
        "evt.policy.<set_id>",
        POLICY,
        ENFORCING,
        "policy sets: registered, updated, retired (every decision point folds them)",
        _v1("policy.set_registered", "policy.set_updated", "policy.set_retired"),
    ),
    Subject(
        "events",
        "evt.policy.decisions.<source>",
        POLICY,
        (AUDIT,),
        "the decision log of each enforcing process, and each denial",
        _v1("policy.decisions_logged", "policy.action_denied"),
    ),
    Subject(
        "events",
        "evt.memory.<owner>",
        CONTEXT,
        (AUDIT,),
        "an agent's memories: stored, forgotten",
        _v1("memory.stored", "memory.forgotten"),
    ),
    Subject(
        "events",
        "evt.knowledge.<kb_id>",
        CONTEXT,
        (AUDIT,),
        "a knowledge base's documents: ingested, forgotten",
        _v1("knowledge.ingested", "knowledge.forgotten"),
    ),
    Subject(
        "events",
        "evt.audit.<record_id>",
        AUDIT,
        (CLI,),
        "crypto-shredding (erasure requested, executed); each change of the secrets store, never its value",
        _v1("audit.erasure_requested", "audit.erasure_executed", "audit.secret_changed"),
    ),
    # --- other streams and buckets ------------------------------------------------------------------
    Subject("work", "work.<host_id>", SCHEDULER, (SANDBOX_AGENT,), "a work item {task_id, attempt} for one host"),
    *(
        Subject("work", f"dlog.{service}", service, (POLICY,), "a batch of decisions for the decision log (DECISIONS)")
        for service in (*ENFORCING, POLICY)  # the policy service logs the decisions of its own API too
    ),
    Subject("kv", "HOSTS.<host_id>", SANDBOX_AGENT, (SCHEDULER,), "a host's capacity, tiers, running tasks, heartbeat"),
    Subject("notice", "audit.checkpoint", AUDIT, (CLI,), "each signed checkpoint of the event log"),
    Subject("notice", "audit.alert", AUDIT, (CLI,), "each integrity finding"),
    # --- the bus between agents (symbi_contracts.bus; hosts carry their agents' messages) -------------
    Subject(
        "message",
        "msg.direct.<agent_id>|topic.<topic>|reply.<agent_id>.<id>",
        SANDBOX_AGENT,
        (SANDBOX_AGENT, CLI),
        "a signed message between agents: metadata in clear, body encrypted (stream MESSAGES)",
        bodies=(bus.Envelope,),
    ),
    Subject(
        "message",
        "dlq.<agent_id>",
        SANDBOX_AGENT,
        (CLI,),
        "a message that could not be delivered, with why (stream DEADLETTER)",
        bodies=(bus.DeadLetter,),
    ),
    Subject(
        "kv", "AGENT_KEYS.<agent_id>", SANDBOX_AGENT, (SANDBOX_AGENT,), "an agent's identity key, signed by its host"
    ),
    Subject(
        "kv", "BUS_DELIVERED.<agent_id>.<seq>", SANDBOX_AGENT, (SANDBOX_AGENT,), "ids of messages handed to an agent"
    ),
    # --- commands (request/reply; JSON) -------------------------------------------------------------
    Subject(
        "command",
        "cmd.lifecycle.assign_task|complete_task",
        LIFECYCLE,
        (SCHEDULER,),
        "move an agent Ready → Running → Ready with its task",
        bodies=(lifecycle_commands.AssignTaskRequest, lifecycle_commands.CompleteTaskRequest),
    ),
    Subject(
        "command",
        "cmd.lifecycle.suspend",
        LIFECYCLE,
        ENFORCING,
        "suspend a running agent after a policy violation",
        bodies=(lifecycle_commands.SuspendRequest,),
    ),
    Subject(
        "command",
        "cmd.policy.decide|decide_batch",
        POLICY,
        ENFORCING,
        "a decision from the policy service (a remote decision point)",
    ),
    Subject(
        "command",
        "cmd.policy.agent_events_caught_up",
        POLICY,
        (LIFECYCLE,),
        "wait until the agents' own policies of an agent event are active",
        bodies=(policy_commands.CaughtUpRequest,),
    ),
    Subject(
        "command",
        "cmd.sandbox-agent.<host_id>.suspend|resume|terminate",
        SANDBOX_AGENT,
        (SCHEDULER,),
        "freeze, thaw or stop a task's sandbox",
        bodies=(sandbox_commands.TaskRef,),
    ),
    Subject(
        "command",
        "cmd.context.store|retrieve|forget|ingest|search_knowledge",
        CONTEXT,
        (SANDBOX_AGENT,),
        "a workload's memory and knowledge actions through the action gateway",
        bodies=(
            context_commands.StoreRequest,
            context_commands.Query,
            context_commands.ForgetRequest,
            context_commands.IngestRequest,
            context_commands.Query,
        ),
    ),
)
