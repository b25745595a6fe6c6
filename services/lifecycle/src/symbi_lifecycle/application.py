"""The write path and the query facade of the lifecycle service.

:class:`LifecycleService` turns requests (from HTTP or NATS, see :mod:`symbi_lifecycle.api`) into
domain commands, runs them through the :class:`~symbi_common.aggregate.Repository` (decide, append
with optimistic concurrency, retry on conflict) and answers with the agent as the command left it,
including the stream ``sequence`` of its last event. Queries are served from the read model; a
caller that passes ``min_sequence`` first waits until the projection has applied that sequence
(read-your-writes).

Every appended event carries a correlation id (the caller's, else a new one) and a causation id (the
id of the command that caused it).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import structlog
from symbi_common.aggregate import Repository
from symbi_common.errors import BadRequest, SymbiError, Timeout, ValidationError
from symbi_common.projection import ProjectionRunner
from symbi_common.sealing import new_event_id
from symbi_contracts.lifecycle.commands import AgentRequest, AssignTaskRequest, CompleteTaskRequest, SuspendRequest
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.lifecycle.events import AgentEvent, AgentStatus
from symbi_dsl import config_name

from symbi_lifecycle.config import convert_config
from symbi_lifecycle.controller import InitializationController
from symbi_lifecycle.domain import (
    AGENT_ID_RE,
    MAX_DEFINITION,
    AgentState,
    AssignTask,
    Command,
    CompleteTask,
    Register,
    Resume,
    Suspend,
    Terminate,
)
from symbi_lifecycle.projections import (
    AgentPage,
    AgentView,
    EventView,
    agent_history,
    from_ns,
    get_agent,
    list_agents,
)

log = structlog.get_logger(__name__)

MAX_PAGE = 500
READ_WAIT_S = 5.0

H_CORRELATION = "Symbi-Correlation-Id"
H_CAUSATION = "Symbi-Causation-Id"
H_USER = "Symbi-User"


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Where a command came from: its own id (the causation id of its events) and the correlation id."""

    command_id: str
    correlation_id: str
    user: str = ""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> CommandContext:
        """Take ids (and the acting user) from ``Symbi-*`` (NATS) or ``X-*`` (HTTP) headers; make up missing ids."""
        lower = {k.lower(): v for k, v in headers.items()}
        command_id = lower.get(H_CAUSATION.lower()) or lower.get("x-request-id") or new_event_id()
        correlation = lower.get(H_CORRELATION.lower()) or lower.get("x-correlation-id") or command_id
        user = lower.get(H_USER.lower()) or lower.get("x-symbi-user") or ""
        return cls(command_id=command_id[:128], correlation_id=correlation[:128], user=user[:128])


# --- requests (the same shapes over HTTP and NATS; over HTTP agent_id comes from the path) ---------


class RegisterRequest(AgentRequest):
    """Register an agent with a JSON ``config`` or a DSL ``definition``; without ``agent_id`` the service picks one.

    ``file`` names the definition in diagnostics (e.g. ``examples/agents/web-fetcher.symbi``).
    """

    config: dict[str, Any] | None = None
    definition: str | None = None
    file: str = ""


class ConfigureRequest(AgentRequest):
    """Replace a Ready or Suspended agent's configuration with a JSON ``config`` or a DSL ``definition``."""

    config: dict[str, Any] | None = None
    definition: str | None = None
    file: str = ""


class ResumeRequest(AgentRequest):
    """Resume a suspended agent once the policy violation is cleared."""

    reason: str = "policy cleared"


class TerminateRequest(AgentRequest):
    """Terminate an agent (Ready, Suspended or Failed)."""

    reason: str = "shutdown"


class GetRequest(AgentRequest):
    """Read one agent; ``min_sequence`` waits until the read model has applied that stream sequence."""

    min_sequence: int = 0


class ListRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One page of agents, optionally filtered by state and name."""

    state: str | None = None
    name: str | None = None
    limit: int = 50
    cursor: str | None = None
    min_sequence: int = 0


class HistoryRequest(AgentRequest):
    """An agent's events after ``after_version``."""

    after_version: int = 0
    limit: int = 100
    min_sequence: int = 0


def to_command(request: AgentRequest) -> Command:
    """The domain command a change request stands for."""
    match request:
        case RegisterRequest():
            return register_command(request)
        case AssignTaskRequest():
            return AssignTask(task_id=request.task_id, description=request.description)
        case CompleteTaskRequest():
            return CompleteTask(task_id=request.task_id, outcome=request.outcome)
        case ConfigureRequest():
            raise TypeError("a configuration change goes through the initialization controller")
        case SuspendRequest():
            return Suspend(reason=request.reason, policy_id=request.policy_id)
        case ResumeRequest():
            return Resume(reason=request.reason)
        case TerminateRequest():
            return Terminate(reason=request.reason)
    raise TypeError(f"{type(request).__name__} is not a change request")


#: The provisional name of a definition. Linear: ``[ \t]`` never crosses a line, so each line start is tried once
#: (``^\s*`` with ``re.M`` rescans every following blank line from each line start: quadratic in blank lines).
_AGENT_NAME_RE = re.compile(r"^[ \t]*agent[ \t]+([A-Za-z_][A-Za-z0-9_]*)", re.M)


def register_command(request: RegisterRequest, registered_by: str = "") -> Register:
    """The ``Register`` command of a request: a decoded config, or a definition with a provisional config."""
    if (request.config is None) == (request.definition is None):
        raise BadRequest("give exactly one of config (JSON) and definition (DSL text)", field="config")
    if request.definition is not None:
        if len(request.definition) > MAX_DEFINITION:  # before any work on it (the domain checks the command again)
            raise ValidationError(f"at most {MAX_DEFINITION} characters", field="definition")
        # The definition is compiled while Initializing; until then the agent carries its name only.
        m = _AGENT_NAME_RE.search(request.definition)
        name = config_name(m.group(1))[:63] if m else "unnamed"
        return Register(
            config=AgentConfig(name=name),
            definition=request.definition,
            source_file=request.file or "<definition>",
            registered_by=registered_by,
        )
    return Register(config=convert_config(request.config), registered_by=registered_by)


def check_agent_id(agent_id: str) -> str:
    """``agent_id`` if it can name an agent (one NATS subject token); :class:`ValidationError` otherwise."""
    if not AGENT_ID_RE.match(agent_id):
        raise ValidationError("must be 1-128 letters, digits, '-' or '_'", field="agent_id")
    return agent_id


def _check_range(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ValidationError(f"must be between {lo} and {hi}, got {value}", field=field)
    return value


class LifecycleService:
    """Command handling over the agent repository, queries over the read model."""

    def __init__(
        self,
        repository: Repository[AgentState, Command, AgentEvent],
        pool: asyncpg.Pool,
        runner: ProjectionRunner | None = None,
        controller: InitializationController | None = None,
        policy_applied: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.repository = repository
        self.pool = pool
        self.runner = runner
        self.controller = controller
        #: Waits until the policy service has applied the agent events up to a stream sequence.
        self.policy_applied = policy_applied

    # --- write path ----------------------------------------------------------------------------------

    async def handle(self, request: AgentRequest, context: CommandContext) -> AgentView:
        """Run one change request; answers with the agent after it (from the aggregate, not the read model).

        A registration is initialized right away (compile, validate, policy decision), so the answer
        shows Ready or Failed; a denied registration is recorded and then raised as PolicyDenied.
        """
        if isinstance(request, ConfigureRequest):
            return await self._configure(request, context)
        if isinstance(request, RegisterRequest):
            command: Command = register_command(request, context.user)
        else:
            command = to_command(request)
        agent_id = request.agent_id or (new_event_id() if isinstance(command, Register) else "")
        check_agent_id(agent_id)
        loaded, records = await self.repository.execute(
            agent_id, command, causation_id=context.command_id, correlation_id=context.correlation_id
        )
        if isinstance(command, Register) and self.controller is not None:
            outcome = await self.controller.initialize(
                agent_id, causation_id=context.command_id, correlation_id=context.correlation_id
            )
            if outcome.denial is not None:
                raise outcome.denial
            if outcome.records:
                loaded, records = outcome.loaded, records + outcome.records
        first = records[0].header.occurred_at if records else None
        return AgentView.of(
            loaded.state,
            version=loaded.tip.version,
            sequence=loaded.tip.sequence,
            created_at=from_ns(first) if isinstance(command, Register) and first is not None else None,
            updated_at=from_ns(records[-1].header.occurred_at) if records else None,
        )

    async def _configure(self, request: ConfigureRequest, context: CommandContext) -> AgentView:
        if self.controller is None:
            raise BadRequest("this service does not change configurations", field="config")
        if (request.config is None) == (request.definition is None):
            raise BadRequest("give exactly one of config (JSON) and definition (DSL text)", field="config")
        outcome = await self.controller.configure(
            check_agent_id(request.agent_id),
            config=convert_config(request.config) if request.config is not None else None,
            definition=request.definition,
            file=request.file,
            user=context.user,
            causation_id=context.command_id,
            correlation_id=context.correlation_id,
        )
        if outcome.denial is not None:
            raise outcome.denial
        loaded, records = outcome.loaded, outcome.records
        if records and self.policy_applied is not None:
            # The agent's own policies change with its configuration: answer once they are in force, so that
            # the operator's next step (typically resuming a suspended agent) is decided under them.
            try:
                await self.policy_applied(records[-1].tip.sequence)
            except SymbiError as exc:
                log.warning("configuration recorded; its policies are not applied yet", error=str(exc))
        return AgentView.of(
            loaded.state,
            version=loaded.tip.version,
            sequence=loaded.tip.sequence,
            updated_at=from_ns(records[-1].header.occurred_at) if records else None,
        )

    # --- queries -------------------------------------------------------------------------------------

    async def caught_up(self, min_sequence: int) -> None:
        """Wait until the read model has applied stream sequence ``min_sequence`` (read-your-writes)."""
        if min_sequence <= 0 or self.runner is None:
            return
        if min_sequence > self.runner.position:
            # A position past the stream's end was never answered by a write: refuse it rather than wait for it.
            last = (await self.runner.js.stream_info(self.runner.stream)).state.last_seq
            if min_sequence > last:
                raise ValidationError(
                    f"{min_sequence} is past the end of the event stream (at {last}); pass the sequence a write "
                    "answered with",
                    field="min_sequence",
                )
        if not await self.runner.wait_for(min_sequence, READ_WAIT_S):
            raise Timeout(
                f"the read model has not reached sequence {min_sequence} within {READ_WAIT_S} s; retry later",
                min_sequence=min_sequence,
                position=self.runner.position,
            )

    async def get(self, request: GetRequest) -> AgentView:
        """One agent from the read model."""
        await self.caught_up(request.min_sequence)
        return await get_agent(self.pool, check_agent_id(request.agent_id))

    async def page(self, request: ListRequest) -> AgentPage:
        """A page of agents from the read model."""
        await self.caught_up(request.min_sequence)
        state: AgentStatus | None = None
        if request.state:
            try:
                state = AgentStatus(request.state)
            except ValueError:
                allowed = ", ".join(s.value for s in AgentStatus)
                raise ValidationError(f"must be one of {allowed}", field="state") from None
        return await list_agents(
            self.pool,
            state=state,
            name=request.name or None,
            limit=_check_range("limit", request.limit, 1, MAX_PAGE),
            cursor=request.cursor or None,
        )

    async def history(self, request: HistoryRequest) -> list[EventView]:
        """An agent's verified, decrypted events from the read model."""
        await self.caught_up(request.min_sequence)
        return await agent_history(
            self.pool,
            check_agent_id(request.agent_id),
            after_version=_check_range("after_version", request.after_version, 0, 2**62),
            limit=_check_range("limit", request.limit, 1, MAX_PAGE),
        )
