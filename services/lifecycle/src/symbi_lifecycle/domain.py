"""The agent aggregate: states, commands, events and the pure ``decide``/``apply`` functions.

The state machine is exactly the one of the specification::

    Initializing → Ready        config valid           Running   → Ready       task complete
    Initializing → Failed       config invalid         Suspended → Running     policy cleared (resume)
    Ready        → Running      task assigned          Suspended → Terminated  manual override
    Running      → Suspended    policy violation       Ready     → Terminated  shutdown
                                                       Failed    → Terminated

``Register`` decides ``[AgentRegistered]``: the agent is Initializing. The initialization controller
(:mod:`symbi_lifecycle.controller`) then parses and compiles a DSL definition, validates the
configuration and asks the policy decision point about ``agent.register``, and sends ``Initialize``
with the outcome, which decides ``AgentReady`` (with the compiled configuration and the decision),
``AgentFailed`` (every problem found) or ``AgentDenied`` (the denying decision). An agent left
Initializing by a crash is picked up again by the controller.
No I/O here: the repository in :mod:`symbi_lifecycle.application` does the loading and appending.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_common.domain import AggregateType
from symbi_common.errors import (
    AlreadyExists,
    DomainError,
    IllegalTransition,
    IntegrityError,
    NotFound,
    ValidationError,
)
from symbi_common.ids import ID_RE
from symbi_contracts.lifecycle.config import AgentConfig, ConfigIssue
from symbi_contracts.lifecycle.events import (
    AGGREGATE_TYPE,
    CODEC,
    AgentConfigured,
    AgentConfigureDenied,
    AgentDenied,
    AgentEvent,
    AgentFailed,
    AgentReady,
    AgentRegistered,
    AgentResumed,
    AgentStatus,
    AgentSuspended,
    AgentTaskAssigned,
    AgentTaskCompleted,
    AgentTerminated,
)

from symbi_lifecycle.config import nul_issue, storable, validate_config
from symbi_lifecycle.issues import bounded

#: An agent id is one NATS subject token: letters, digits, '-' and '_' only.
AGENT_ID_RE = ID_RE
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")
MAX_TEXT = 1_000
MAX_DEFINITION = 1_000_000


S = AgentStatus

#: Every allowed transition: (from, to) -> what causes it. Nothing else may ever happen.
TRANSITIONS: dict[tuple[AgentStatus, AgentStatus], str] = {
    (S.INITIALIZING, S.READY): "valid config",
    (S.INITIALIZING, S.FAILED): "invalid config or registration denied",
    (S.READY, S.RUNNING): "task assigned",
    (S.RUNNING, S.SUSPENDED): "policy violation",
    (S.RUNNING, S.READY): "task complete",
    (S.SUSPENDED, S.RUNNING): "policy cleared",
    (S.SUSPENDED, S.TERMINATED): "manual override",
    (S.READY, S.TERMINATED): "shutdown",
    (S.FAILED, S.TERMINATED): "terminated after failure",
}


# --- commands --------------------------------------------------------------------------------------


class Register(msgspec.Struct, frozen=True, kw_only=True):
    """Register a new agent with its configuration, or with a DSL ``definition`` (compiled while Initializing).

    With a definition, ``config`` is provisional (the name only) until the controller compiles it.
    """

    name: ClassVar[str] = "register"
    config: AgentConfig
    definition: str = ""
    source_file: str = ""
    registered_by: str = ""


class Initialize(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of initialization: problems (→ Failed), a denial (→ Failed) or the final config (→ Ready)."""

    name: ClassVar[str] = "initialize"
    config: AgentConfig | None = None
    issues: tuple[ConfigIssue, ...] = ()
    decision: DecisionRecord | None = None


class AssignTask(msgspec.Struct, frozen=True, kw_only=True):
    """Give a Ready agent a task: Ready → Running."""

    name: ClassVar[str] = "assign_task"
    task_id: str
    description: str = ""


class CompleteTask(msgspec.Struct, frozen=True, kw_only=True):
    """The running task finished: Running → Ready. ``task_id``, if given, must be the current task."""

    name: ClassVar[str] = "complete_task"
    task_id: str | None = None
    outcome: str = "succeeded"


class Suspend(msgspec.Struct, frozen=True, kw_only=True):
    """A policy violation stops a running agent: Running → Suspended."""

    name: ClassVar[str] = "suspend"
    reason: str = "policy violation"
    policy_id: str | None = None


class Resume(msgspec.Struct, frozen=True, kw_only=True):
    """The policy violation was cleared: Suspended → Running."""

    name: ClassVar[str] = "resume"
    reason: str = "policy cleared"


class Terminate(msgspec.Struct, frozen=True, kw_only=True):
    """Shut an agent down for good: from Ready (shutdown), Suspended (manual override) or Failed."""

    name: ClassVar[str] = "terminate"
    reason: str = "shutdown"


class Configure(msgspec.Struct, frozen=True, kw_only=True):
    """Replace a Ready or Suspended agent's configuration (already compiled and validated, allowed by ``decision``)."""

    name: ClassVar[str] = "configure"
    config: AgentConfig
    decision: DecisionRecord | None = None
    refused: bool = False
    """The decision did not let the change happen (a deny, or an approval nobody can give): record, change nothing."""


Command = Register | Initialize | Configure | AssignTask | CompleteTask | Suspend | Resume | Terminate
TASK_OUTCOMES = ("succeeded", "failed", "cancelled")

#: Which commands each state accepts.
ALLOWED: dict[AgentStatus, tuple[str, ...]] = {
    S.INITIALIZING: (Initialize.name,),
    S.READY: (AssignTask.name, Configure.name, Terminate.name),
    S.RUNNING: (CompleteTask.name, Suspend.name),
    # A suspended agent may be reconfigured (its policies changed) to clear the violation before it resumes.
    S.SUSPENDED: (Resume.name, Configure.name, Terminate.name),
    S.FAILED: (Terminate.name,),
    S.TERMINATED: (),
}


# --- state -----------------------------------------------------------------------------------------


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    """An agent as its events left it. ``status`` is None until it is registered. Snapshot-able."""

    agent_id: str
    status: AgentStatus | None = None
    config: AgentConfig | None = None
    errors: tuple[ConfigIssue, ...] = ()
    current_task: str | None = None
    suspension_reason: str | None = None
    tasks_completed: int = 0
    termination_reason: str | None = None
    definition: str = ""
    """The DSL text while Initializing (dropped once initialized: the config is what counts then)."""
    source_file: str = ""
    registered_by: str = ""

    @property
    def exists(self) -> bool:
        return self.status is not None


def initial(agent_id: str) -> AgentState:
    """The state of an agent that has no events yet."""
    return AgentState(agent_id=agent_id)


def _moved(state: AgentState, to: AgentStatus) -> AgentStatus:
    if state.status is None or (state.status, to) not in TRANSITIONS:
        # apply() trusts verified history; a transition outside the table means a corrupt or foreign stream.
        raise IntegrityError(f"agent {state.agent_id}: history holds an impossible transition {state.status} -> {to}")
    return to


def apply(state: AgentState, event: AgentEvent) -> AgentState:
    """The state after ``event``. Pure; raises :class:`IntegrityError` on a transition outside the table."""
    match event:
        case AgentRegistered():
            if state.exists:  # registering again would reset any state, Terminated included, to Initializing
                raise IntegrityError(f"agent {state.agent_id}: history registers it again in state {state.status}")
            return AgentState(
                agent_id=state.agent_id,
                status=S.INITIALIZING,
                config=event.config,
                definition=event.definition,
                source_file=event.source_file,
                registered_by=event.registered_by,
            )
        case AgentReady():
            return msgspec.structs.replace(
                state, status=_moved(state, S.READY), config=event.config or state.config, definition=""
            )
        case AgentFailed():
            return msgspec.structs.replace(
                state,
                status=_moved(state, S.FAILED),
                errors=event.errors,
                config=event.config or state.config,
                definition="",
            )
        case AgentDenied():
            return msgspec.structs.replace(state, status=_moved(state, S.FAILED), errors=event.errors, definition="")
        case AgentConfigured():
            if state.status not in (S.READY, S.SUSPENDED):
                raise IntegrityError(f"agent {state.agent_id}: history configures it in state {state.status}")
            return msgspec.structs.replace(state, config=event.config)
        case AgentConfigureDenied():
            return state
        case AgentTaskAssigned():
            return msgspec.structs.replace(state, status=_moved(state, S.RUNNING), current_task=event.task_id)
        case AgentTaskCompleted():
            return msgspec.structs.replace(
                state,
                status=_moved(state, S.READY),
                current_task=None,
                tasks_completed=state.tasks_completed + 1,
            )
        case AgentSuspended():
            return msgspec.structs.replace(state, status=_moved(state, S.SUSPENDED), suspension_reason=event.reason)
        case AgentResumed():
            return msgspec.structs.replace(state, status=_moved(state, S.RUNNING), suspension_reason=None)
        case AgentTerminated():
            return msgspec.structs.replace(
                state,
                status=_moved(state, S.TERMINATED),
                current_task=None,
                termination_reason=event.reason,
            )
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - the union is exhaustive


def _text(field: str, value: str, *, required: bool = False) -> None:
    if required and not value.strip():
        raise ValidationError("must not be empty", field=field)
    if len(value) > MAX_TEXT:
        raise ValidationError(f"at most {MAX_TEXT} characters", field=field)


def decide(state: AgentState, command: Command) -> list[AgentEvent]:
    """The events ``command`` causes in ``state``, or a typed domain error.

    Raises :class:`AlreadyExists` for a second registration, :class:`NotFound` for a command on an
    unregistered agent, :class:`IllegalTransition` (naming the state, the command and what is allowed)
    for a command the current state does not accept, and :class:`ValidationError` for bad arguments.
    """
    if isinstance(command, Register):
        if state.exists:
            raise AlreadyExists(
                f"agent {state.agent_id} is already registered; pick another id", agent_id=state.agent_id
            )
        if len(command.definition) > MAX_DEFINITION:
            raise ValidationError(f"at most {MAX_DEFINITION} characters", field="definition")
        nul = nul_issue(command)  # the API refuses a body holding one; a command from elsewhere must be, too
        if nul is not None:
            raise ValidationError(nul.message, field=nul.field)
        return [
            AgentRegistered(
                agent_id=state.agent_id,
                config=command.config,
                definition=command.definition,
                source_file=command.source_file[:MAX_TEXT],
                registered_by=command.registered_by[:MAX_TEXT],
            )
        ]
    if state.status is None:
        raise NotFound(f"agent {state.agent_id} is not registered; register it first", agent_id=state.agent_id)
    allowed = ALLOWED[state.status]
    if command.name not in allowed:
        raise IllegalTransition(state=state.status.value, command=command.name, allowed=list(allowed))
    match command:
        case Initialize():
            return [_initialized(state.agent_id, command)]
        case Configure():
            if command.refused and command.decision is not None:
                return [AgentConfigureDenied(decision=command.decision)]
            issues = validate_config(command.config, state.agent_id)
            if issues:
                raise ConfigRejected(issues)
            return [AgentConfigured(config=command.config, decision=command.decision)]
        case AssignTask():
            if not _TASK_ID_RE.match(command.task_id):
                raise ValidationError("must be 1-128 letters, digits or '_.:-'", field="task_id")
            _text("description", command.description)
            return [AgentTaskAssigned(task_id=command.task_id, description=command.description)]
        case CompleteTask():
            current = state.current_task or ""
            if command.task_id is not None and command.task_id != current:
                raise ValidationError(
                    f"the agent is running task {current!r}, not {command.task_id!r}", field="task_id"
                )
            if command.outcome not in TASK_OUTCOMES:
                raise ValidationError(f"must be one of {', '.join(TASK_OUTCOMES)}", field="outcome")
            return [AgentTaskCompleted(task_id=current, outcome=command.outcome)]
        case Suspend():
            _text("reason", command.reason, required=True)
            return [AgentSuspended(reason=command.reason, policy_id=command.policy_id)]
        case Resume():
            _text("reason", command.reason)
            return [AgentResumed(reason=command.reason)]
        case Terminate():
            _text("reason", command.reason)
            return [AgentTerminated(reason=command.reason, previous=state.status)]
    raise AssertionError(f"unknown command {command!r}")  # pragma: no cover - the union is exhaustive


class ConfigRejected(DomainError):
    """A new configuration breaks the rules; ``issues`` lists every problem (nothing was changed)."""

    code = "invalid_config"

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        first = issues[0] if issues else ConfigIssue("config", "invalid")
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        listed = bounded(issues)  # the answer lists them: as bounded as an event
        super().__init__(
            f"{first.field}: {first.message[:1000]}{more}", issues=[msgspec.to_builtins(i) for i in listed]
        )
        self.issues = listed


def _initialized(agent_id: str, command: Initialize) -> AgentEvent:
    """The event an initialization outcome decides; the config must validate to become Ready.

    A config holding a NUL character is never recorded (no event may hold one: see :func:`nul_issue`): the agent
    fails with that issue and keeps its provisional config. Issues are made storable the same way.
    """
    nul = nul_issue(command.config) if command.config is not None else None
    if command.issues or nul is not None:
        errors = tuple(storable(issue) for issue in command.issues)
        if nul is not None and nul not in errors:
            errors = (nul, *errors)
        errors = bounded(errors)  # however many problems a definition has, the event must fit the store
        return AgentFailed(errors=errors, config=None if nul else command.config, decision=command.decision)
    if command.decision is not None and command.decision.effect == "deny":
        reason = command.decision.reason or "denied by policy"
        return AgentDenied(decision=command.decision, errors=(ConfigIssue("policy", reason),))
    if command.config is None:
        raise ValidationError("a successful initialization carries the config", field="config")
    issues = validate_config(command.config, agent_id)
    if issues:
        return AgentFailed(errors=bounded(issues), config=command.config, decision=command.decision)
    return AgentReady(config=command.config, decision=command.decision)


#: The agent aggregate type, as the :class:`symbi_common.aggregate.Repository` expects it.
AGENT: AggregateType[AgentState, Command, AgentEvent] = AggregateType(
    AGGREGATE_TYPE, CODEC, AgentState, initial, apply, decide
)
