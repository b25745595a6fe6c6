"""The initialization controller: what happens to an agent while it is Initializing.

For an agent in Initializing it

1. compiles the DSL definition the agent was registered with (if any) into an :class:`AgentConfig`,
   every problem becoming a :class:`ConfigIssue` with file, line, column, excerpt and hint;
2. validates the configuration (:func:`validate_config`);
3. asks the policy decision point whether the registration may proceed (action ``agent.register``
   on ``Agent::"<id>"``; principal ``User::"<registered_by>"``), applying ``cap_resources``
   conditions to the configuration;
4. sends ``Initialize`` with the outcome, so the agent becomes Ready (the event carries the final
   config and the decision), Failed (the problems) or Failed by an ``agent.denied`` event.

Registration runs it inline, so the caller's answer already shows Ready/Failed. If the process dies
in between, or the decision point is unreachable, the agent stays Initializing and the controller's
sweep (at start-up, then periodically) finishes it. Initializing twice is harmless: the second
``Initialize`` meets a state that no longer accepts it and is dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import structlog
from symbi_common.aggregate import Loaded, Repository
from symbi_common.caps import cap_limits
from symbi_common.decisions import (
    AllowWithConditions,
    Decision,
    DecisionPoint,
    DecisionRequest,
    Deny,
    EntityRef,
    denied,
)
from symbi_common.errors import (
    BadRequest,
    IllegalTransition,
    InfrastructureError,
    NotFound,
    PolicyDenied,
    SymbiError,
    Timeout,
)
from symbi_common.eventstore import Recorded
from symbi_common.policy.enforcement import LIFECYCLE_AGENT_CONFIG
from symbi_common.policy.hooks import Enforcer
from symbi_common.telemetry import traced
from symbi_contracts.lifecycle.config import AgentConfig, ConfigIssue
from symbi_contracts.lifecycle.events import AgentEvent, AgentStatus
from symbi_dsl import DslError, compile_agent
from symbi_dsl.body import DEFAULT_RUNNER_IMAGE

from symbi_lifecycle.config import convert_config, nul_issue, validate_config
from symbi_lifecycle.domain import ALLOWED, AgentState, Command, ConfigRejected, Configure, Initialize
from symbi_lifecycle.issues import MAX_ISSUES
from symbi_lifecycle.metrics import INITIALIZATIONS

log = structlog.get_logger(__name__)

ACTION = "agent.register"
CONFIGURE_ACTION = "agent.configure"
SWEEP_INTERVAL_S = 5.0
#: The sweep leaves agents registered this recently to the inline initialization of their registration.
SWEEP_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What initializing one agent did: the agent after it, the events appended, a denial to report."""

    loaded: Loaded[AgentState]
    records: list[Recorded[AgentEvent]]
    denial: PolicyDenied | None = None


def issues_of(err: DslError) -> tuple[ConfigIssue, ...]:
    """A definition's diagnostics as config issues (``field`` is the diagnostic's code), in source order; errors
    first if there are more than are kept (:func:`symbi_lifecycle.issues.bounded` keeps the first)."""
    ordered = err.diagnostics
    if len(ordered) > MAX_ISSUES:
        ordered = sorted(ordered, key=lambda d: d.severity != "error")
    return tuple(
        ConfigIssue(
            d.code,
            d.message,
            file=d.file,
            line=d.line,
            column=d.column,
            excerpt=d.excerpt,
            hint=d.hint,
        )
        for d in ordered
    )


def compile_definition(
    definition: str, agent_id: str, file: str, runner_image: str
) -> tuple[AgentConfig | None, tuple[ConfigIssue, ...]]:
    """The configuration a DSL ``definition`` compiles to, or why it does not (an issue, never an exception: a
    compiler fault is an issue too). Not yet validated (:func:`validate_config`). Pure, CPU-bound."""
    try:
        raw = compile_agent(definition, agent_id=agent_id, file=file or "<definition>", runner_image=runner_image)
    except DslError as err:
        return None, issues_of(err)
    except Exception as err:  # a compiler fault: the agent fails with it rather than staying Initializing
        log.exception("the DSL compiler failed on a definition", agent_id=agent_id)
        fault = f"the definition could not be compiled ({type(err).__name__}: {str(err)[:200]}); please report it"
        return None, (ConfigIssue("definition", fault),)
    try:
        return convert_config(raw, prefix="config"), ()
    except BadRequest as err:
        return None, (ConfigIssue(str(err.details.get("field", "config")), err.message),)


def compile_state(
    state: AgentState, runner_image: str = DEFAULT_RUNNER_IMAGE
) -> tuple[AgentConfig | None, tuple[ConfigIssue, ...]]:
    """The configuration an Initializing agent ends up with, or every problem found (a body runs in
    ``runner_image``). Pure."""
    assert state.config is not None
    config = state.config
    if state.definition:
        compiled, problems = compile_definition(state.definition, state.agent_id, state.source_file, runner_image)
        if compiled is None:
            return None, problems
        config = compiled
    issues = tuple(validate_config(config, state.agent_id))
    # A compiled NUL (the DSL escape \0) is one of the issues; the config holding it must not reach the event.
    return (None if nul_issue(config) else config), issues


def register_request(
    state: AgentState, config: AgentConfig, *, action: str = ACTION, user: str | None = None
) -> DecisionRequest:
    """The ``agent.register`` (or ``agent.configure``) question for ``config`` (names as in the Cedar schema)."""
    r = config.resources
    resources = {
        "memory_mb": r.memory_mb,
        "cpu_cores": float(r.cpu_cores),
        "disk_io_mbps": r.disk_io_mbps,
        "network_io_mbps": r.network_io_mbps,
        "execution_timeout_s": float(r.execution_timeout_s),
    }
    return DecisionRequest(
        principal=EntityRef(type="User", id=(state.registered_by if user is None else user) or "anonymous"),
        action=action,
        resource=EntityRef(
            type="Agent",
            id=state.agent_id,
            attrs={
                "name": config.name,
                "security_tier": config.security_tier,
                "capabilities": list(config.capabilities),
            },
        ),
        context={
            "resources": resources,
            "security_tier": config.security_tier,
            "capabilities": list(config.capabilities),
        },
    )


def _capped(config: AgentConfig, decision: Decision) -> AgentConfig:
    """``config`` with its resource limits lowered to every ``cap_resources`` condition of ``decision``."""
    if not isinstance(decision, AllowWithConditions):
        return config
    return msgspec.structs.replace(config, resources=cap_limits(config.resources, decision.conditions))


def _approval_needed(decision: Decision) -> bool:
    return isinstance(decision, AllowWithConditions) and any(c.kind == "require_approval" for c in decision.conditions)


class InitializationController:
    """Takes agents out of Initializing; see the module docstring."""

    def __init__(
        self,
        repository: Repository[AgentState, Command, AgentEvent],
        decisions: Callable[[], Awaitable[DecisionPoint]],
        pool: asyncpg.Pool | None = None,
        *,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        runner_image: str = DEFAULT_RUNNER_IMAGE,
    ) -> None:
        self.repository = repository
        #: The image DSL bodies run in (``runtime.agent_image``).
        self.runner_image = runner_image
        self.decisions = decisions
        self.pool = pool
        self.sweep_interval_s = sweep_interval_s

    async def initialize(
        self, agent_id: str, *, causation_id: str | None = None, correlation_id: str | None = None
    ) -> Outcome:
        """Initialize ``agent_id`` if it is Initializing; the agent as it is afterwards either way.

        An unreachable decision point leaves the agent Initializing (the sweep retries later).
        """
        with traced("lifecycle.initialize", attributes={"symbi.agent_id": agent_id}) as span:
            outcome = await self._initialize(agent_id, causation_id=causation_id, correlation_id=correlation_id)
            if outcome.records:
                status = outcome.loaded.state.status
                result = "denied" if outcome.denial else "ready" if status is AgentStatus.READY else "failed"
                INITIALIZATIONS.labels(result).inc()
                span.set_attribute("symbi.outcome", result)
        return outcome

    async def _initialize(self, agent_id: str, *, causation_id: str | None, correlation_id: str | None) -> Outcome:
        loaded = await self.repository.load(agent_id)
        state = loaded.state
        if state.status is not AgentStatus.INITIALIZING:
            return Outcome(loaded, [])
        config, issues = await asyncio.to_thread(compile_state, state, self.runner_image)
        command = Initialize(config=config, issues=issues)
        denial: PolicyDenied | None = None
        if not issues:
            assert config is not None
            request = register_request(state, config)
            try:
                point = await self.decisions()
            except (InfrastructureError, SymbiError) as err:
                log.warning(
                    "decision point unavailable; the agent stays Initializing", agent_id=agent_id, error=str(err)
                )
                return Outcome(loaded, [])
            verdict = await Enforcer.around(point).decide(request, LIFECYCLE_AGENT_CONFIG)
            decision, record = verdict.decision, verdict.record
            if verdict.undecided:
                log.warning("no policy decision; the agent stays Initializing", agent_id=agent_id, error=record.reason)
                return Outcome(loaded, [])
            if isinstance(decision, Deny):
                denial = denied(request, decision)
                command = Initialize(config=config, decision=record)
            elif _approval_needed(decision):
                issue = ConfigIssue(
                    "policy",
                    "registration requires approval, and approvals are not available for registration",
                    hint=f"policies: {', '.join(decision.policies)}",
                )
                command = Initialize(config=config, issues=(issue,), decision=record)
            else:
                command = Initialize(config=_capped(config, decision), decision=record)
        try:
            loaded, records = await self.repository.execute(
                agent_id, command, causation_id=causation_id, correlation_id=correlation_id
            )
        except IllegalTransition:  # someone else initialized it meanwhile
            return Outcome(await self.repository.load(agent_id, fresh=True), [])
        return Outcome(loaded, records, denial)

    async def configure(
        self,
        agent_id: str,
        *,
        config: AgentConfig | None = None,
        definition: str | None = None,
        file: str = "",
        user: str = "",
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Outcome:
        """Change a Ready or Suspended agent's configuration, gated by an ``agent.configure`` decision.

        An invalid configuration is refused with :class:`ConfigRejected` (nothing recorded); a denied
        change is recorded as ``agent.configure_denied`` and reported as the outcome's ``denial``.
        """
        with traced("lifecycle.configure", attributes={"symbi.agent_id": agent_id}):
            return await self._configure(agent_id, config, definition, file, user, causation_id, correlation_id)

    async def _configure(
        self,
        agent_id: str,
        config: AgentConfig | None,
        definition: str | None,
        file: str,
        user: str,
        causation_id: str | None,
        correlation_id: str | None,
    ) -> Outcome:
        loaded = await self.repository.load(agent_id)
        state = loaded.state
        if state.status is None:
            raise NotFound(f"agent {agent_id} is not registered; register it first", agent_id=agent_id)
        if Configure.name not in ALLOWED[state.status]:
            raise IllegalTransition(
                state=state.status.value, command=Configure.name, allowed=list(ALLOWED[state.status])
            )
        if definition is not None:
            compiled, problems = await asyncio.to_thread(
                compile_definition, definition, agent_id, file or "", self.runner_image
            )
            if compiled is None:
                raise ConfigRejected(problems)
            new = compiled
        else:
            assert config is not None
            new = config
        issues = validate_config(new, state.agent_id)
        if issues:
            raise ConfigRejected(issues)
        request = register_request(state, new, action=CONFIGURE_ACTION, user=user)
        verdict = await Enforcer.around(await self.decisions()).decide(request, LIFECYCLE_AGENT_CONFIG)
        decision, record = verdict.decision, verdict.record
        if verdict.undecided:  # no decision could be had: nothing changes, nothing is recorded (503 / 504)
            error = Timeout if record.reason_code == "policy_timeout" else InfrastructureError
            raise error(f"changing the configuration of {agent_id} could not be decided: {record.reason}")
        denial: PolicyDenied | None = None
        if isinstance(decision, Deny):
            denial = denied(request, decision)
        elif _approval_needed(decision):
            denial = PolicyDenied(
                f"changing the configuration of {agent_id} requires approval, which is not available for it",
                action=CONFIGURE_ACTION,
                policies=list(decision.policies),
                policy_version=decision.policy_version,
            )
        if denial is not None:
            command = Configure(config=new, decision=record, refused=True)
        else:
            command = Configure(config=_capped(new, decision), decision=record)
        loaded, records = await self.repository.execute(
            agent_id, command, causation_id=causation_id, correlation_id=correlation_id
        )
        return Outcome(loaded, records, denial)

    async def sweep(self, *, grace_s: float = SWEEP_GRACE_S) -> int:
        """Initialize every agent the read model shows Initializing for longer than ``grace_s``."""
        if self.pool is None:
            return 0
        before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=grace_s)
        rows = await self.pool.fetch(
            "SELECT id FROM lifecycle.agents WHERE state = $1 AND updated_at <= $2 ORDER BY updated_at LIMIT 500",
            AgentStatus.INITIALIZING.value,
            before,
        )
        done = 0
        for row in rows:
            try:
                outcome = await self.initialize(row["id"])
            except SymbiError as err:
                log.warning("initialization failed; will retry", agent_id=row["id"], error=str(err))
                continue
            done += bool(outcome.records)
        return done

    async def run(self, ready: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Resume what a crash left Initializing (once ``ready`` says the read model caught up), then sweep."""
        if ready is not None:
            await ready()
        grace = 0.0
        while True:
            try:
                resumed = await self.sweep(grace_s=grace)
                if resumed:
                    log.info("initialized agents left Initializing", count=resumed)
            except Exception as err:  # the loop must survive a database hiccup
                log.warning("initialization sweep failed", error=str(err))
            grace = SWEEP_GRACE_S
            await asyncio.sleep(self.sweep_interval_s)
