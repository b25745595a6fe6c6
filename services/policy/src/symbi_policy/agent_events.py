"""Following the agents' events: their own policies become active when they are Ready, retire with them.

A :class:`~symbi_common.follower.Follower` (position in memory) reads ``evt.agent.>`` from the stream start. Each event is verified and
decrypted (the lifecycle service's codec). The configuration of ``agent.registered`` is remembered until
``agent.ready`` activates its policies (or those of the final configuration ``agent.ready`` carries);
``agent.configured`` replaces them (an operator may change a suspended agent's policies to clear a
violation); ``agent.terminated`` retires them. Every change names the stream sequence of the agent event it
follows, and the policy set takes a change only from an event newer than its last one
(:class:`~symbi_policy.domain.FollowAgent`): so neither a replay after a restart nor a second policy replica
applying an event late brings back an older configuration's policies. Configurations are also applied only once
the follower has caught up with the stream, newest per agent, so a replay does not even try. A configuration with
the policies the set has already changes nothing (no policy event), unless an agent event between the set's last
and it could still be applied late (:attr:`~symbi_policy.domain.FollowAgent.previous`).

An agent event whose payload can no longer be read because the agent's data key was destroyed (the agent was
erased) does not leave the agent's set as it was: it is retired if the event is the agent's termination (its
signed type says so), else it forbids the agent every action (fail closed: what the agent's policies are can
no longer be known).

An erased agent's own policy set is shredded with it (its data key ``policy.agent-<id>`` destroyed): no event
can be written to it any more, and none is needed, since every decision point reads that set as forbidding the
agent every action (:class:`~symbi_common.policy.follower.PolicyFollower`). A change of such a set is skipped
and logged (:meth:`AgentPolicyFollower._write_set`), never retried: an agent event read before the erasure (or
replayed while the set's key is gone) leaves the follower free to go on.

An event signed with a key this process's registry does not know yet (the lifecycle service's key was rotated,
and the replica that signed it learnt the new version first) is applied again once the registry has caught up with
the ``REGISTRY`` stream (:mod:`symbi_common.registry_catch_up`); only a key still unknown is refused as before.

The agent events this follower never acts on (:data:`IGNORED_TYPES`: two of them come with every task) are
skipped by their type header before they are verified, decrypted and decoded; their position is passed
like any other's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from symbi_common.commands import CommandMeta
from symbi_common.errors import DataKeyDestroyed, DomainError, IntegrityError, KeyringError, Timeout, ValidationError
from symbi_common.events import tag_of
from symbi_common.eventstore import H_EVENT_TYPE, EventStore
from symbi_common.follower import Delivery, Follower, wait_for_position
from symbi_common.policy.agent_sets import agent_set_id
from symbi_common.policy.events import AGGREGATE_TYPE as POLICY_AGGREGATE
from symbi_common.positions import MemoryPositions, Unit
from symbi_common.reader import decode_opened
from symbi_common.registry_catch_up import CatchUp, RegistryCatchUp
from symbi_common.sealing import open_envelope
from symbi_common.telemetry import continue_trace, observe_consumed
from symbi_contracts.lifecycle.config import PolicySpec
from symbi_contracts.lifecycle.events import (
    CODEC,
    AgentConfigured,
    AgentConfigureDenied,
    AgentDenied,
    AgentFailed,
    AgentReady,
    AgentRegistered,
    AgentResumed,
    AgentSuspended,
    AgentTaskAssigned,
    AgentTaskCompleted,
    AgentTerminated,
)
from symbi_contracts.policy.commands import CaughtUp, CaughtUpRequest

from symbi_policy.application import PolicyService
from symbi_policy.metrics import AGENT_EVENTS

log = structlog.get_logger(__name__)

#: The agent event types :meth:`AgentPolicyFollower._apply` has no branch for, skipped by the event's type
#: header (``Symbi-Event-Type``) before verification: verifying and decrypting them only to do nothing cost
#: CPU on every task (``agent.task_assigned`` and ``agent.task_completed``). The header is not signed, so a
#: skipped event is never acted on; only the types the follower acts on (registered, ready, configured,
#: terminated) must be verified first. A type not named here (an unknown or newer one, or no header) takes
#: the full path as before, so a newer type is refused and reported as it was. A header naming a type of this
#: set on an event whose signed type is acted on could only come from the lifecycle service (the only service
#: that may publish on ``evt.agent.>``, with the key that signs these events), which could as well leave the
#: event out; the audit service verifies every stored event. A type gets a branch → it leaves this set.
IGNORED_TYPES = frozenset(
    tag_of(t)
    for t in (
        AgentTaskAssigned,
        AgentTaskCompleted,
        AgentSuspended,
        AgentResumed,
        AgentFailed,
        AgentDenied,
        AgentConfigureDenied,
    )
)


class AgentPolicyFollower:
    def __init__(
        self,
        js: Any,
        store: EventStore,
        service: PolicyService,
        *,
        on_error: Callable[[str], None] | None = None,
        fetch_timeout: float = 5.0,
        catch_up_registry: CatchUp | None = None,
    ) -> None:
        self.js = js
        self.store = store
        self.service = service
        self.on_error = on_error
        #: Brings the store's key registry up to the newest version on ``REGISTRY`` when an event names an unknown
        #: signing key (the runtime's ``keys.catch_up``); None: such an event is refused at once.
        self.catch_up_registry = catch_up_registry
        self._pending: dict[str, tuple[PolicySpec, ...]] = {}
        #: The newest configured policies per agent, applied once the follower has caught up.
        #: The newest configuration of each agent not applied yet: its event's stream sequence, policies, and the
        #: stream sequence of the agent's change before it (:attr:`~symbi_policy.domain.FollowAgent.previous`).
        self._configured: dict[str, tuple[int, tuple[PolicySpec, ...], int | None]] = {}
        #: Per agent, the stream sequence of its last event read that changes its set (ready, configured).
        self._changed: dict[str, int] = {}
        #: The last agent event applied; it stays behind a configuration whose application is deferred.
        self.position = 0
        #: Deliveries skipped by their type header (:data:`IGNORED_TYPES`), never verified.
        self.skipped = 0
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[Any] | None = None
        self.follower = Follower(
            js,
            service="policy",
            name="agent_policies",
            subjects=("evt.agent.>",),
            positions=MemoryPositions(),
            handler=self._apply_batch,
            fetch_timeout=fetch_timeout,
            acks=False,
        )

    async def start(self, spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]] | None = None) -> None:
        """Start following (in a task of ``spawn``, a service runtime's, or of its own ended by :meth:`stop`)."""
        run = self.follower.run()
        self._task = spawn(run, "policy:agent-events") if spawn else asyncio.create_task(run)

    async def stop(self) -> None:
        await self.follower.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _apply_batch(self, unit: Unit, batch: list[Delivery]) -> None:
        keys = RegistryCatchUp(self.catch_up_registry, follower="agent_policies")
        for msg in batch:
            await self._on_msg(msg, keys)

    async def _on_msg(self, msg: Delivery, keys: RegistryCatchUp) -> None:
        sequence = msg.sequence
        if msg.headers.get(H_EVENT_TYPE) in IGNORED_TYPES:
            self.skipped += 1
            await self._handle(msg, sequence, keys, ignored=True)
        else:
            # A span of the agent's trace (its registration): activating its policies belongs to it.
            with continue_trace(
                "policy.agent_event", msg.headers, attributes={"symbi.subject": msg.subject, "symbi.sequence": sequence}
            ):
                await self._handle(msg, sequence, keys)
        observe_consumed(AGENT_EVENTS, msg.stored_at)
        if not self._configured:
            async with self._advanced:
                self.position = sequence
                self._advanced.notify_all()

    async def caught_up(self, request: CaughtUpRequest, meta: CommandMeta | None = None) -> CaughtUp:
        """Wait (at most ``timeout_s``, capped at 30 s) until the agent events up to ``sequence`` are applied:
        the lifecycle asks after a configuration change, so that a policy change takes effect before the
        operator's next step (a resume) is decided."""
        timeout = min(max(request.timeout_s, 0.0), 30.0)
        if not await wait_for_position(self._advanced, lambda: self.position, request.sequence, timeout):
            raise Timeout(f"agent events are applied up to sequence {self.position}, not yet {request.sequence}")
        return CaughtUp(position=self.position)

    async def _handle(self, msg: Delivery, sequence: int, keys: RegistryCatchUp, *, ignored: bool = False) -> None:
        """Apply one agent event. An error that is not a refusal of the agent's policies (the event store, the
        policy set stream, a registry that cannot catch up) is raised: the follower applies the batch again from
        its position, so no policy change is passed over (each step is idempotent; a deferred configuration stays
        pending until applied). An unknown signing key is refused only once the registry has caught up."""
        if not ignored:
            try:
                await keys.verified(lambda: self._apply(msg, sequence), subject=msg.subject, sequence=sequence)
            except (IntegrityError, KeyringError, DomainError) as exc:  # e.g. an event of an erased agent
                self._failed(f"agent event at {msg.subject} ({sequence}) not applied", exc)
        # Deferred configurations are applied once caught up, also when the last event is an ignored one.
        if self._configured and msg.num_pending == 0:
            for configured_id, (source, specs, previous) in list(self._configured.items()):
                await self._policies(configured_id, source, specs, previous=previous)
                del self._configured[configured_id]

    async def _policies(
        self,
        agent_id: str,
        source: int,
        specs: tuple[PolicySpec, ...],
        *,
        register_only: bool = False,
        previous: int | None = None,
    ) -> None:
        """Apply the agent's own policies as the agent event at ``source`` has them (``register_only``: only if
        the agent has no set yet, for ``agent.ready``; ``previous``: the agent's change before it); if the policy
        service refuses them, the agent's set forbids it everything instead (fail closed: never an agent without
        the policies it was registered with). Nothing is written to a set whose data key was destroyed."""

        async def apply() -> None:
            try:
                await self.service.agent_policies(
                    agent_id, source, specs, register_only=register_only, previous=previous
                )
            except (ValidationError, ValueError) as exc:  # PolicyRejected is one; ValueError: Cedar refused the text
                self._failed(f"the policies of agent {agent_id} were refused; it is forbidden every action", exc)
                await self.service.refuse_agent_policies(
                    agent_id, source, str(exc), register_only=register_only, previous=previous
                )
            except DomainError as exc:
                self._failed(f"the policies of agent {agent_id} were not applied", exc)

        await self._write_set(agent_id, source, apply)

    async def _write_set(self, agent_id: str, source: int, write: Callable[[], Awaitable[object]]) -> None:
        """Change the agent's own set through ``write``, unless the set's data key was destroyed (the agent was
        erased, its set shredded with it): then no event can be written to the set any more, and none is needed,
        since every decision point reads it as forbidding the agent every action. Skipped and logged: neither
        retried (the follower would never get past the event) nor an error."""
        set_id = agent_set_id(agent_id)
        if set_id in self.service.follower.erased:
            log.warning("policy set of an erased agent not changed: it is shredded", set_id=set_id, source=source)
            return
        try:
            await write()
        except DataKeyDestroyed as exc:  # destroyed after the policy follower read the set (or while it reads)
            if _key_name(exc) != f"{POLICY_AGGREGATE}.{set_id}":
                raise
            log.warning(
                "policy set of an erased agent not changed: its data key was destroyed",
                set_id=set_id,
                source=source,
                error=str(exc),
            )

    def _failed(self, what: str, exc: Exception) -> None:
        log.error(what, error=str(exc))
        if self.on_error is not None:
            self.on_error(f"{what}: {exc}")

    async def _apply(self, msg: Delivery, sequence: int) -> None:
        opened = open_envelope(msg.data, subject=msg.subject, sequence=sequence, registry=self.store.registry)
        agent_id = opened.header.aggregate_id
        try:
            event = (await decode_opened(opened, self.store.datakeys, CODEC)).event
        except DataKeyDestroyed as exc:
            await self._erased(agent_id, sequence, opened.header.event_type, exc)
            return
        if isinstance(event, AgentRegistered):
            if event.config.policies:
                self._pending[agent_id] = event.config.policies
        elif isinstance(event, AgentReady):
            specs = self._pending.get(agent_id, ())
            final = getattr(event, "config", None)  # the configuration as compiled and capped, if recorded
            if final is not None:
                specs = final.policies
            if specs:
                await self._policies(agent_id, sequence, specs, register_only=True)
            self._pending.pop(agent_id, None)  # (kept until applied: a batch applied again still has it)
            self._changed[agent_id] = sequence
        elif isinstance(event, AgentConfigured):
            self._configured[agent_id] = (sequence, event.config.policies, self._changed.get(agent_id))
            self._changed[agent_id] = sequence
        elif isinstance(event, AgentTerminated):
            self._forget(agent_id)
            reason = event.reason
            await self._write_set(agent_id, sequence, lambda: self.service.retire_agent(agent_id, sequence, reason))

    async def _erased(self, agent_id: str, sequence: int, event_type: str, exc: DataKeyDestroyed) -> None:
        """The agent event at ``sequence`` (of the signed ``event_type``) cannot be read: the agent was erased. Its
        set is retired if the event is its termination, else it forbids the agent every action; never left as it
        was. A configuration read before the erasure is not applied any more (it would write the agent's
        policies again)."""
        log.warning("agent event of an erased agent", agent_id=agent_id, sequence=sequence, error=str(exc))
        self._forget(agent_id)
        if event_type == tag_of(AgentTerminated):
            await self._write_set(
                agent_id, sequence, lambda: self.service.retire_agent(agent_id, sequence, "its events were erased")
            )
        else:
            await self._write_set(agent_id, sequence, lambda: self.service.erased_agent(agent_id, sequence))

    def _forget(self, agent_id: str) -> None:
        self._pending.pop(agent_id, None)
        self._configured.pop(agent_id, None)
        self._changed.pop(agent_id, None)


def _key_name(exc: DataKeyDestroyed) -> str:
    """The name (``<type>.<id>``) of the data key ``exc`` says was destroyed."""
    return str(exc.details.get("key_id", "")).rpartition("/")[0] or str(exc.details.get("key_id", ""))
