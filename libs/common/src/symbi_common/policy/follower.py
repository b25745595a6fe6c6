"""Following the policy-set events: the active policy sets of the whole runtime, in every process.

A :class:`~symbi_common.follower.Follower` on ``evt.policy.*`` (position in memory) reads the stream from its
start and then stays live, so a change reaches every follower as soon as JetStream stores it (well within a
second: its pull waits for the next event). Every event is
verified (signature, signer authorised for ``evt.policy.>``, hash chain per set), decrypted and, for an
active set, compiled before it is applied.

Fail closed: an event that cannot be applied (forged, out of chain, undecryptable, undecodable, or a
text that no longer compiles) is never skipped. It **halts** its policy set: while any set is halted the
engine denies every request (``policy_halted``), the follower is not healthy (``/readyz`` says so under
``policy-sets``) and ``symbi_policy_set_halted{set_id}`` is 1. The set is fixed by a later event of it
that applies — one that follows the set's last applied event, verifies and compiles (an update with text
that compiles, or a retirement) — and nothing else. A forged event in the middle of a set's chain can
only be removed by an operator with the stream admin credential; then the followers are restarted.
A failure that says nothing about the event (NATS or the data key store away a moment: :data:`TRANSIENT`)
halts nothing: the follower applies the batch again, passing over what it applied already.

A signing key this process's registry does not know yet does not halt at once either: after a rotation of the
policy service's key, its events are signed with the new key as soon as *its* registry follower applied the
version, maybe before this process's has (halting there would deny every decision until a restart). The registry
catches up with the ``REGISTRY`` stream (``catch_up_registry``, the runtime's ``keys.catch_up``; once per batch) and
the event is applied again (:mod:`symbi_common.registry_catch_up`); only a key still unknown halts its set. A
catch-up that cannot read the stream is transient (the batch is applied again).

One exception, for erasure: an agent's own set (``agent-<agent_id>``) is crypto-shredded with the agent
(``audit erase agent.<id>`` destroys the set's data key ``policy.agent-<id>``: its text may name personal
data). An event of such a set that verifies and follows the set's chain, but whose payload cannot be
decrypted because the set's own data key was destroyed (:class:`~symbi_common.errors.DataKeyDestroyed`),
does not halt: the set's tip moves past it, and the set forbids its agent every action
(:func:`~symbi_common.policy.agent_sets.erased_policy_text`; never only the baseline, which allows agents
most actions). Its revision is the event's place in the set (a set's revision always is). Every process
replaying the same events reaches the same set at the same version, and a restart after an erasure is no
outage. An operator's set whose data key was destroyed still halts (fail closed: an operator acts).

The engine is rebuilt after each change once the follower has caught up (during the initial replay
only once, at the end). Its version is the stream sequence of the last policy event read: the same
number in every process that has read the same events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import structlog
from prometheus_client import Gauge

from symbi_common.datakeys import DataKeys, split_key_id
from symbi_common.errors import DataKeyDestroyed, InfrastructureError, SymbiError, Timeout
from symbi_common.follower import Delivery, Follower, wait_for_position
from symbi_common.keyring import KeyRegistry
from symbi_common.policy.agent_sets import agent_of_set, erased_policy_text
from symbi_common.policy.cedar import CompiledPolicy, compile_policies
from symbi_common.policy.engine import EMPTY, PolicyEngine
from symbi_common.policy.events import (
    AGGREGATE_TYPE,
    POLICY_SET_CODEC,
    POLICY_SETS_SUBJECT,
    PolicySetState,
    apply_policy_event,
)
from symbi_common.positions import MemoryPositions, Unit
from symbi_common.reader import decode_opened
from symbi_common.registry_catch_up import CatchUp, RegistryCatchUp
from symbi_common.sealing import ChainTip, OpenedEvent, check_link, open_envelope
from symbi_common.streams import EVENTS_STREAM
from symbi_common.telemetry import SECURITY_EVENTS, continue_trace, observe_consumed

log = structlog.get_logger(__name__)
POLICY_SET_HALTED = Gauge(
    "symbi_policy_set_halted",
    "1 while a policy set is halted (an event of it could not be applied): every decision denies",
    ["set_id"],
)


def set_id_of(subject: str) -> str:
    """The policy set a policy-set event's subject (``evt.policy.<set_id>``) belongs to."""
    return subject.split(".", 2)[-1]


#: What a moment of NATS or the store being away raises: retried, never a verdict on the event (which halts its set).
TRANSIENT = (InfrastructureError, nats.errors.Error, OSError, TimeoutError)


class PolicyFollower:
    """The policy sets as the event stream has them, and the engine built from the active ones."""

    def __init__(
        self,
        js: Any,
        registry: KeyRegistry,
        datakeys: DataKeys,
        *,
        stream: str = EVENTS_STREAM,
        service: str = "symbi",
        fetch_timeout: float = 5.0,
        catch_up_registry: CatchUp | None = None,
    ) -> None:
        self.js = js
        self.registry = registry
        #: Brings ``registry`` up to the newest version on ``REGISTRY`` when an event names an unknown signing key
        #: (a service runtime's ``keys.catch_up``); None: such an event halts its set at once.
        self.catch_up_registry = catch_up_registry
        self.datakeys = datakeys
        self.stream = stream
        self.engine: PolicyEngine = EMPTY
        self.states: dict[str, PolicySetState] = {}
        self.tips: dict[str, ChainTip] = {}
        self.rejected: list[str] = []
        #: Halted policy sets: set id -> why (the event that could not be applied). Every decision denies.
        self.halted: dict[str, str] = {}
        #: Agents' own sets whose data key was destroyed (the agent was erased): no event of theirs can be read or
        #: written any more; each forbids its agent every action.
        self.erased: set[str] = set()
        self.position = 0
        self.compiled: dict[str, list[CompiledPolicy]] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        # Every process rebuilds the policy sets from the stream's start: the position lives in memory.
        self.follower = Follower(
            js,
            service=service,
            name="policy",
            subjects=(POLICY_SETS_SUBJECT,),
            positions=MemoryPositions(),
            handler=self._apply_batch,
            stream=stream,
            fetch_timeout=fetch_timeout,
            acks=False,
        )
        #: Set once every policy event stored when the follower started is applied.
        self.ready = self.follower.synced

    @property
    def version(self) -> int:
        return self.engine.version

    @property
    def healthy(self) -> bool:
        """Every stored policy event read, and no policy set halted (the health check of every enforcer)."""
        return self.ready.is_set() and not self.halted

    async def start(
        self,
        timeout: float = 10.0,
        *,
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]] | None = None,
    ) -> None:
        """Follow from the stream start and return once every stored policy event is applied.

        ``spawn`` runs the follower (a service runtime's, so that it stops with the service); by default a task
        of its own, ended by :meth:`stop`.
        """
        name = f"policy-follower:{self.follower.service}"
        self._task = spawn(self.follower.run(), name) if spawn else asyncio.create_task(self.follower.run(), name=name)
        try:
            await asyncio.wait_for(asyncio.shield(self.ready.wait()), timeout)
        except TimeoutError:
            await self.stop()
            raise Timeout(f"the policy events were not read within {timeout} s; is JetStream up?") from None

    async def stop(self) -> None:
        await self.follower.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_for(self, version: int, timeout: float = 5.0) -> bool:
        """Wait until the engine's version is at least ``version``; False on timeout."""
        return await wait_for_position(self._changed, lambda: self.engine.version, version, timeout)

    async def _apply_batch(self, unit: Unit, batch: list[Delivery]) -> None:
        keys = RegistryCatchUp(self.catch_up_registry, follower="policy")
        for msg in batch:
            await self._on_msg(msg, keys)

    async def _on_msg(self, msg: Delivery, keys: RegistryCatchUp) -> None:
        sequence = msg.sequence
        # The change as a span of the trace that made it (an agent's policies activated during its registration …).
        with continue_trace(
            "policy.follow", msg.headers, attributes={"symbi.subject": msg.subject, "symbi.sequence": sequence}
        ) as span:
            try:
                # An unknown signing key: the registry catches up and it is applied again; still unknown, it halts.
                await keys.verified(
                    lambda: self._apply(msg.subject, sequence, msg.data), subject=msg.subject, sequence=sequence
                )
            except TRANSIENT:  # (a data key read, a registry catch-up): the batch is applied again, nothing is skipped
                raise
            except Exception as exc:  # never skipped: the set is halted (every decision denies) until fixed
                self._halt(set_id_of(msg.subject), sequence, f"{sequence} {msg.subject}: {exc!r}")
                span.set_attribute("symbi.rejected", repr(exc)[:500])
        observe_consumed("policy_follower", msg.stored_at)
        self.position = sequence
        if msg.num_pending == 0:
            await self._rebuild()

    def _halt(self, set_id: str, sequence: int, why: str) -> None:
        log.error("policy event not applied: policy set halted, every decision denies", set_id=set_id, error=why)
        self.rejected = [*self.rejected[-99:], why]
        self.halted[set_id] = f"event {sequence} could not be applied: {why}"[:1000]
        POLICY_SET_HALTED.labels(set_id).set(1)
        SECURITY_EVENTS.labels("rejected_event").inc()

    def _fixed(self, set_id: str) -> None:
        if self.halted.pop(set_id, None) is not None:
            log.warning("policy set fixed: no longer halted", set_id=set_id)
            POLICY_SET_HALTED.labels(set_id).set(0)

    async def _apply(self, subject: str, sequence: int, data: bytes) -> None:
        opened = open_envelope(data, subject=subject, sequence=sequence, registry=self.registry)
        set_id = opened.header.aggregate_id
        tip = self.tips.get(set_id, ChainTip())
        if sequence <= tip.sequence:
            return  # applied already: its batch is applied again after a transient failure
        check_link(tip, opened)
        try:
            event = (await decode_opened(opened, self.datakeys, POLICY_SET_CODEC)).event
        except DataKeyDestroyed:
            agent_id = agent_of_set(set_id)
            if agent_id is None or split_key_id(opened.header.data_key_id)[0] != f"{AGGREGATE_TYPE}.{set_id}":
                raise  # an operator's set (or a key not the set's own): it halts
            self._shredded(set_id, agent_id, opened)
            return
        state = apply_policy_event(self.states.get(set_id, PolicySetState(set_id=set_id)), event)
        self.tips[set_id] = opened.tip
        self.states[set_id] = state
        self.erased.discard(set_id)
        if state.active:
            try:
                compiled = compile_policies(set_id, state.cedar)
            except SymbiError as exc:  # e.g. stored before the schema changed: the old text must not stay in force
                self.compiled.pop(set_id, None)
                self._halt(set_id, sequence, f"{sequence} {set_id}: the set no longer compiles: {exc}")
                return
            self.compiled[set_id] = compiled
        else:
            self.compiled.pop(set_id, None)
        self._fixed(set_id)

    def _shredded(self, set_id: str, agent_id: str, opened: OpenedEvent) -> None:
        """An event of agent ``agent_id``'s own set that can no longer be decrypted: the set's data key was
        destroyed with the agent's erasure. The set forbids the agent every action from this event on."""
        text = erased_policy_text(agent_id)
        compiled = self.compiled.get(set_id) if set_id in self.erased else None
        if compiled is None:  # (it compiles; if it did not, the set would halt)
            compiled = compile_policies(set_id, text)
            log.warning("policy set of an erased agent: it forbids the agent every action", set_id=set_id)
        before = self.states.get(set_id)
        self.tips[set_id] = opened.tip
        self.states[set_id] = PolicySetState(
            set_id=set_id,
            status="active",
            cedar=text,
            revision=opened.header.aggregate_version,
            description=f"agent {agent_id} was erased: its policy set can no longer be read",
            origin=f"agent:{agent_id}",
            source=before.source if before is not None else 0,
        )
        self.compiled[set_id] = compiled
        self.erased.add(set_id)
        self._fixed(set_id)

    async def _rebuild(self) -> None:
        if self.position == self.engine.version:
            return
        self.engine = PolicyEngine(self.compiled, self.position, halted=self.halted)
        async with self._changed:
            self._changed.notify_all()
