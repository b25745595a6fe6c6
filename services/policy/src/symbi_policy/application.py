"""The policy service's use cases: change policy sets, decide, store decision logs, what-if.

Changes go through the repositories (decide, append with optimistic concurrency); the service's own
:class:`PolicyFollower` is its read model and its engine, exactly as in every other process, so the
version it answers with is the one every embedded decision point reaches after the same events. A
change is answered only after the follower has applied it, so a decision asked right after a change
is made against it.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
import structlog
from symbi_common.aggregate import Loaded, Repository
from symbi_common.decisions import Decision, DecisionRequest
from symbi_common.errors import AlreadyExists, NotFound, Timeout, ValidationError
from symbi_common.eventstore import EventStore
from symbi_common.policy.agent_sets import agent_policy_text, agent_set_id, erased_policy_text, refused_policy_text
from symbi_common.policy.cedar import compile_policies
from symbi_common.policy.decision_log import LogDecisionsTyped, LogReceipt
from symbi_common.policy.events import (
    POLICY_SETS_SUBJECT,
    DecisionLogEvent,
    LoggedDecision,
    PolicySetEvent,
    PolicySetRegistered,
    PolicySetRetired,
    PolicySetState,
)
from symbi_common.policy.follower import PolicyFollower
from symbi_common.policy.observed import observed, observed_batch
from symbi_common.policy.points import BatchResult
from symbi_common.streams import EVENTS_STREAM
from symbi_common.telemetry import traced
from symbi_contracts.lifecycle.config import PolicySpec

from symbi_policy.domain import (
    FollowAgent,
    LogBatch,
    LogState,
    RegisterSet,
    RetireSet,
    SetCommand,
    UpdateSet,
    check_set_id,
    log_id_for,
)
from symbi_policy.history import recent_decisions
from symbi_policy.lockout import guard_lockout
from symbi_policy.metrics import AGENT_POLICY_SETS, POLICY_SETS, POLICY_VERSION
from symbi_policy.whatif import WhatIfReport, what_if

log = structlog.get_logger(__name__)
APPLY_WAIT_S = 5.0
MAX_BATCH = 10_000
BASELINE_SET = "baseline"
#: The most logged decisions a what-if replays (each is decided twice), whatever ``[policy] what_if_limit`` says.
MAX_WHAT_IF = 2_000


# --- requests and views (the same shapes over HTTP and NATS) --------------------------------------------


class RegisterSetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    set_id: str
    cedar: str
    description: str = ""
    force_lockout: bool = False
    """Make the change even if it leaves no admin allowed the HTTP APIs (:mod:`symbi_policy.lockout`)."""


class UpdateSetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    set_id: str = ""
    cedar: str
    expected_revision: int | None = None
    force_lockout: bool = False
    """Make the change even if it leaves no admin allowed the HTTP APIs (:mod:`symbi_policy.lockout`)."""


class RetireSetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    set_id: str = ""
    reason: str = "retired"
    expected_revision: int | None = None
    force_lockout: bool = False
    """Make the change even if it leaves no admin allowed the HTTP APIs (:mod:`symbi_policy.lockout`)."""


class GetSetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    set_id: str
    min_version: int = 0


class ListSetsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_retired: bool = False
    min_version: int = 0


class DecideBatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    requests: list[DecisionRequest]


class WhatIfRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Evaluate ``cedar`` as the new text of ``set_id`` (None: the set retired) on the recorded decisions."""

    set_id: str
    cedar: str | None = None
    limit: int = 0


class PolicySetView(msgspec.Struct, frozen=True, kw_only=True):
    set_id: str
    status: str
    revision: int
    description: str
    origin: str
    cedar: str
    policies: list[str]
    sequence: int
    """Stream sequence of the set's last event."""
    policy_version: int
    """The policy version decisions are made against now (at least ``sequence`` after a change)."""
    halted: str = ""
    """Why the set is halted (an event of it could not be applied; every decision denies), else empty."""


class PolicySetPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[PolicySetView]
    policy_version: int
    halted: dict[str, str] = msgspec.field(default_factory=dict)
    """Every halted policy set (including one whose first event never applied) and why."""


class PolicyService:
    """Command handling over the policy-set repository, decisions from the follower's engine."""

    def __init__(
        self,
        sets: Repository[PolicySetState, SetCommand, PolicySetEvent],
        logs: Repository[LogState, LogBatch, DecisionLogEvent],
        follower: PolicyFollower,
        store: EventStore,
        *,
        what_if_limit: int = MAX_WHAT_IF,
    ) -> None:
        self.sets = sets
        self.logs = logs
        self.follower = follower
        self.store = store
        self.what_if_limit = max(1, min(what_if_limit, MAX_WHAT_IF))
        self._what_if_gate = asyncio.Semaphore(1)

    # --- policy sets --------------------------------------------------------------------------------

    async def _change(self, set_id: str, command: SetCommand, correlation_id: str | None = None) -> PolicySetView:
        check_set_id(set_id)
        loaded, _ = await self.sets.execute(set_id, command, correlation_id=correlation_id)
        return await self._applied(set_id, loaded)

    async def _applied(self, set_id: str, loaded: Loaded[PolicySetState]) -> PolicySetView:
        """The set's view once the follower has applied it (:class:`Timeout` if it does not in time)."""
        if not await self.follower.wait_for(loaded.tip.sequence, APPLY_WAIT_S):
            raise Timeout(
                f"policy set {set_id} was stored at sequence {loaded.tip.sequence} but not applied within "
                f"{APPLY_WAIT_S} s",
                sequence=loaded.tip.sequence,
            )
        return self._view(loaded.state, loaded.tip.sequence)

    async def register(self, request: RegisterSetRequest, *, origin: str = "operator") -> PolicySetView:
        check_set_id(request.set_id)
        if not request.force_lockout:
            guard_lockout(self.follower, request.set_id, request.cedar, register=True)
        command = RegisterSet(cedar=request.cedar, description=request.description, origin=origin)
        return await self._change(request.set_id, command)

    async def update(self, request: UpdateSetRequest) -> PolicySetView:
        check_set_id(request.set_id)
        if not request.force_lockout:
            guard_lockout(self.follower, request.set_id, request.cedar)
        command = UpdateSet(cedar=request.cedar, expected_revision=request.expected_revision)
        return await self._change(request.set_id, command)

    async def retire(self, request: RetireSetRequest) -> PolicySetView:
        check_set_id(request.set_id)
        if not request.force_lockout:
            guard_lockout(self.follower, request.set_id, None)
        command = RetireSet(reason=request.reason, expected_revision=request.expected_revision)
        return await self._change(request.set_id, command)

    def _view(self, state: PolicySetState, sequence: int) -> PolicySetView:
        compiled = self.follower.compiled.get(state.set_id, [])
        return PolicySetView(
            set_id=state.set_id,
            status=state.status or "unknown",
            revision=state.revision,
            description=state.description,
            origin=state.origin,
            cedar=state.cedar,
            policies=[p.name for p in compiled] if state.active else [],
            sequence=sequence,
            policy_version=self.follower.version,
            halted=self.follower.halted.get(state.set_id, ""),
        )

    async def _caught_up(self, min_version: int) -> None:
        if min_version > self.follower.version:
            # Every stored policy event applied and still short: the version asked for was never written.
            try:
                last = (await self.follower.js.get_last_msg(EVENTS_STREAM, POLICY_SETS_SUBJECT)).seq
            except nats.js.errors.NotFoundError:
                last = 0
            if last <= self.follower.position:
                raise ValidationError(
                    f"{min_version} is past the current policy version {self.follower.version}; pass the "
                    "policy_version a change answered with",
                    field="min_version",
                )
        if min_version > 0 and not await self.follower.wait_for(min_version, APPLY_WAIT_S):
            raise Timeout(f"policy version {min_version} not reached within {APPLY_WAIT_S} s", min_version=min_version)

    async def get(self, request: GetSetRequest) -> PolicySetView:
        await self._caught_up(request.min_version)
        check_set_id(request.set_id)
        state = self.follower.states.get(request.set_id)
        if state is None:
            raise NotFound(f"policy set {request.set_id} does not exist", set_id=request.set_id)
        return self._view(state, self.follower.tips[request.set_id].sequence)

    async def page(self, request: ListSetsRequest) -> PolicySetPage:
        await self._caught_up(request.min_version)
        items = [
            self._view(state, self.follower.tips[set_id].sequence)
            for set_id, state in sorted(self.follower.states.items())
            if state.active or request.include_retired
        ]
        return PolicySetPage(items=items, policy_version=self.follower.version, halted=dict(self.follower.halted))

    # --- decisions ----------------------------------------------------------------------------------

    async def decide(self, request: DecisionRequest) -> Decision:
        with observed("service", request) as out:
            out.append(self.follower.engine.decide(request))
        return out[0]

    async def decide_batch(self, request: DecideBatchRequest) -> BatchResult:
        if len(request.requests) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} requests per batch", field="requests")
        engine = self.follower.engine
        with observed_batch("service", request.requests) as out:
            out.extend(engine.decide_batch(request.requests))
        return BatchResult(decisions=out, policy_version=engine.version)

    # --- decision log and what-if -------------------------------------------------------------------

    async def log_decisions(self, request: LogDecisionsTyped) -> LogReceipt:
        if not request.batch_id or len(request.batch_id) > 64:
            raise ValidationError("must be 1-64 characters", field="batch_id")
        loaded, records = await self.logs.execute(
            log_id_for(request.source), LogBatch(batch_id=request.batch_id, entries=tuple(request.entries))
        )
        return LogReceipt(stored=len(request.entries), sequence=loaded.tip.sequence, duplicate=not records)

    async def history(self, limit: int) -> list[LoggedDecision]:
        """The most recent ``limit`` logged decisions (every source), oldest first: read from the end of the log."""
        return await recent_decisions(self.store, self.follower.js, limit)

    async def what_if(self, request: WhatIfRequest) -> WhatIfReport:
        check_set_id(request.set_id)
        limit = request.limit or self.what_if_limit
        if not 1 <= limit <= self.what_if_limit:
            raise ValidationError(f"must be between 1 and {self.what_if_limit}", field="limit")
        if request.cedar is not None:
            compile_policies(request.set_id, request.cedar)  # refuse a bad proposal before reading the log
        # One what-if at a time, its Cedar decisions off the event loop: a reader must not stall the service.
        async with self._what_if_gate:
            engine = self.follower.engine
            active = {k: v for k, v in self.follower.compiled.items() if k in engine.set_ids}
            history = await self.history(limit)
            return await asyncio.to_thread(what_if, active, engine.version, request.set_id, request.cedar, history)

    # --- the baseline and agents' own policies ------------------------------------------------------

    async def ensure_baseline(self, cedar: str) -> PolicySetView | None:
        """Register ``cedar`` as policy set ``baseline`` if no policy set exists yet."""
        if self.follower.states:
            return None
        try:
            return await self.register(
                RegisterSetRequest(
                    set_id=BASELINE_SET,
                    cedar=cedar,
                    description="normal operations of the Symbi services",
                ),
                origin="baseline",
            )
        except AlreadyExists:  # another replica got there first
            return None

    async def agent_policies(
        self,
        agent_id: str,
        source: int,
        specs: tuple[PolicySpec, ...],
        *,
        register_only: bool = False,
        previous: int | None = None,
    ) -> PolicySetView | None:
        """Make ``agent-<agent_id>`` say what the agent event at stream sequence ``source`` says the agent's
        own policies are: registered, a new revision, or one that never applies if it has none (any more). A
        set retired (with its agent, or by an operator) stays retired; an older event than the set's last
        changes nothing, and so does the text the set has once it followed ``previous`` (the agent's change
        before this one, :attr:`FollowAgent.previous`). :class:`PolicyRejected` (or ValidationError) if they
        cannot be compiled."""
        cedar = agent_policy_text(agent_id, specs) if specs else ""
        command = FollowAgent(
            agent_id=agent_id, source=source, cedar=cedar, description=f"policies of agent {agent_id}",
            register_only=register_only, previous=previous,
        )  # fmt: skip
        return await self._follow_agent(command)

    async def refuse_agent_policies(
        self, agent_id: str, source: int, reason: str, *, register_only: bool = False, previous: int | None = None
    ) -> PolicySetView | None:
        """The agent's own policies were refused: ``agent-<agent_id>`` forbids it every action instead (fail
        closed), registered or as a new revision, until a configuration that is accepted replaces it."""
        cedar = refused_policy_text(agent_id, reason)
        command = FollowAgent(
            agent_id=agent_id, source=source, cedar=cedar, description=f"agent {agent_id}: policies refused",
            register_only=register_only, previous=previous,
        )  # fmt: skip
        return await self._follow_agent(command, refused=True)

    async def retire_agent(self, agent_id: str, source: int, reason: str) -> PolicySetView | None:
        """The agent was terminated: its set, if it has one, is retired."""
        retire = f"agent terminated: {reason}"[:1000]
        return await self._follow_agent(FollowAgent(agent_id=agent_id, source=source, retire=retire))

    async def erased_agent(self, agent_id: str, source: int) -> PolicySetView | None:
        """The agent event at ``source`` can no longer be read (the agent was erased): ``agent-<agent_id>``, if
        active, forbids the agent every action (fail closed), whatever agent event it followed last."""
        return await self._follow_agent(FollowAgent(agent_id=agent_id, source=source, erased=True))

    async def _follow_agent(self, command: FollowAgent, *, refused: bool = False) -> PolicySetView | None:
        set_id = agent_set_id(command.agent_id)
        known = self.follower.states.get(set_id)  # it may lag the stored set, never lead it
        if known is not None and not known.active:
            return None  # retired for good
        if command.erased:
            if known is not None and known.cedar == erased_policy_text(command.agent_id):
                return None  # forbidding its erased agent everything already
        elif known is not None and (known.source >= command.source or command.register_only):
            return None  # the set would take nothing from an event this old
        attributes: dict[str, str | int] = {
            "symbi.agent_id": command.agent_id,
            "symbi.policy.set_id": set_id,
            "symbi.source": command.source,
        }
        with traced("policy.agent_policies", attributes=attributes):
            loaded, recs = await self.sets.execute(set_id, command)
            if not recs:
                return None
            view = await self._applied(set_id, loaded)
        match recs[-1].event:
            case PolicySetRegistered():
                AGENT_POLICY_SETS.labels("refused" if refused else "activated").inc()
            case PolicySetRetired():
                AGENT_POLICY_SETS.labels("retired").inc()
            case _:
                AGENT_POLICY_SETS.labels("erased" if command.erased else "refused" if refused else "updated").inc()
        return view

    async def refresh_metrics(self) -> None:
        """Policy sets by status and the policy version, as the follower has them now."""
        counts = {"active": 0, "retired": 0}
        for state in self.follower.states.values():
            key = "active" if state.active else "retired"
            counts[key] += 1
        for status, n in counts.items():
            POLICY_SETS.labels(status).set(n)
        POLICY_VERSION.set(self.follower.version)
