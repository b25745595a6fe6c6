"""The policy service's aggregates: policy sets, and the decision log of each enforcing process.

A **policy set** (``evt.policy.<set_id>``) is registered, updated and retired; each change carries a
revision number (1, 2, …). Its Cedar text is parsed and validated against the schema in ``decide``, so
an invalid policy is refused with Cedar's message and line and never becomes an event; the revision
that was active stays active. Updating to the same text is a no-op. An agent's own set
(``agent-<agent_id>``) is changed by :class:`FollowAgent`, which names the agent event it follows and is
taken only from one newer than the set's last; an agent whose events can no longer be read (erased) has its
set forbid it every action.

A **decision log** (``evt.policy.decisions.<source>``) stores the decisions one enforcing process sent,
a batch per event, and each denial as an :class:`ActionDenied` event of its own. A batch id seen among
the recent ones is ignored, so a batch retried after a lost reply is stored once.

No I/O here: the repository in :mod:`symbi_policy.application` loads and appends.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec
from symbi_common.domain import AggregateType
from symbi_common.errors import AlreadyExists, DomainError, IllegalTransition, NotFound, ValidationError
from symbi_common.ids import ID_RE
from symbi_common.policy.agent_sets import erased_policy_text, no_policy_text
from symbi_common.policy.cedar import SET_ID_RE, compile_policies
from symbi_common.policy.events import (
    AGGREGATE_TYPE,
    DECISION_LOG_CODEC,
    DECISION_LOG_PREFIX,
    POLICY_SET_CODEC,
    ActionDenied,
    DecisionLogEvent,
    DecisionsLogged,
    LoggedDecision,
    PolicySetEvent,
    PolicySetRegistered,
    PolicySetRetired,
    PolicySetState,
    PolicySetUpdated,
    apply_policy_event,
)

MAX_TEXT = 1_000
SOURCE_RE = ID_RE
RECENT_BATCHES = 256


class RevisionMismatch(DomainError):
    """The caller changed a policy set based on a revision that is no longer the current one."""

    code = "revision_mismatch"
    http_status = 409


def check_set_id(set_id: str) -> str:
    if not SET_ID_RE.match(set_id):
        raise ValidationError("must be 1-128 letters, digits, '-' or '_'", field="set_id")
    return set_id


# --- policy sets ---------------------------------------------------------------------------------------


class RegisterSet(msgspec.Struct, frozen=True, kw_only=True):
    name: ClassVar[str] = "register"
    cedar: str
    description: str = ""
    origin: str = "operator"


class UpdateSet(msgspec.Struct, frozen=True, kw_only=True):
    name: ClassVar[str] = "update"
    cedar: str
    expected_revision: int | None = None


class RetireSet(msgspec.Struct, frozen=True, kw_only=True):
    name: ClassVar[str] = "retire"
    reason: str = "retired"
    expected_revision: int | None = None


class FollowAgent(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's own set as the agent event at stream sequence ``source`` leaves it: ``cedar`` its text (empty:
    the agent has no policies of its own), or retired for ``retire`` (the agent was terminated)."""

    name: ClassVar[str] = "follow agent"
    agent_id: str
    source: int
    cedar: str = ""
    description: str = ""
    retire: str = ""
    #: Only register the set (``agent.ready``): an existing set is left as it is, even one that names no source
    #: (written before sources were recorded), so a replay never writes an older configuration over it.
    register_only: bool = False
    #: The stream sequence of the agent's event before ``source`` that changes its set (ready or configured; 0:
    #: none), as the follower read it; None: not known. A change to the text the set has is no
    #: change (no event, the policy version stays) if the set followed that event already: then no agent event a
    #: replica could still apply late lies between the set's last and this one.
    previous: int | None = None
    #: The agent event at ``source`` can no longer be read: the agent was erased (its data key destroyed). What
    #: its set followed cannot be known any more, so an active set forbids the agent every action, whatever event
    #: it followed last (an erasure is final: no later event of the agent can be read either).
    erased: bool = False


SetCommand = RegisterSet | UpdateSet | RetireSet | FollowAgent


def _text(field: str, value: str) -> None:
    if len(value) > MAX_TEXT:
        raise ValidationError(f"at most {MAX_TEXT} characters", field=field)


def _expect(state: PolicySetState, expected: int | None) -> None:
    if expected is not None and expected != state.revision:
        raise RevisionMismatch(
            f"policy set {state.set_id} is at revision {state.revision}, not {expected}; reload it and retry",
            set_id=state.set_id,
            revision=state.revision,
        )


def decide_set(state: PolicySetState, command: SetCommand) -> list[PolicySetEvent]:
    """The events ``command`` causes; typed errors for a refused command (PolicyRejected for bad Cedar)."""
    match command:
        case RegisterSet():
            if state.status is not None:
                raise AlreadyExists(
                    f"policy set {state.set_id} already exists (revision {state.revision}, {state.status}); "
                    "update it or pick another id",
                    set_id=state.set_id,
                )
            _text("description", command.description)
            compile_policies(state.set_id, command.cedar)
            return [
                PolicySetRegistered(
                    set_id=state.set_id,
                    cedar=command.cedar,
                    revision=1,
                    description=command.description,
                    origin=command.origin,
                )
            ]
        case UpdateSet():
            _require_active(state, command.name)
            _expect(state, command.expected_revision)
            if command.cedar == state.cedar:
                return []
            compile_policies(state.set_id, command.cedar)
            return [PolicySetUpdated(cedar=command.cedar, revision=state.revision + 1)]
        case RetireSet():
            _require_active(state, command.name)
            _expect(state, command.expected_revision)
            _text("reason", command.reason)
            return [PolicySetRetired(reason=command.reason, revision=state.revision + 1)]
        case FollowAgent():
            return _follow_agent(state, command)
    raise AssertionError(f"unknown command {command!r}")  # pragma: no cover - the union is exhaustive


def _follow_agent(state: PolicySetState, command: FollowAgent) -> list[PolicySetEvent]:
    """Every policy replica follows the agent events and may apply one late: a change from an agent event no
    newer than the set's last one decides to nothing, so an older configuration never replaces a newer one.
    A change with the text the set has is still recorded (with its newer source) for the same reason, unless
    the set followed the agent's previous change already (:attr:`FollowAgent.previous`): no replica can then
    hold an agent event between the two, and the change decides to nothing."""
    if command.erased:
        return _erased(state, command)
    if command.source <= state.source or (command.register_only and state.status is not None):
        return []
    if state.status is None:
        if command.retire or not command.cedar:
            return []  # nothing to register (an agent without policies, or one terminated before it had a set)
        compile_policies(state.set_id, command.cedar)
        origin = f"agent:{command.agent_id}"
        return [PolicySetRegistered(state.set_id, command.cedar, 1, command.description, origin, command.source)]
    if state.status != "active":
        return []  # retired with its agent, or by an operator: it stays retired
    if command.retire:
        _text("reason", command.retire)
        return [PolicySetRetired(reason=command.retire, revision=state.revision + 1, source=command.source)]
    cedar = command.cedar or no_policy_text(command.agent_id)
    if cedar == state.cedar and command.previous is not None and command.previous <= state.source:
        return []  # the same text, and nothing older than this event is left for a late replica to apply
    if cedar != state.cedar:
        compile_policies(state.set_id, cedar)
    return [PolicySetUpdated(cedar=cedar, revision=state.revision + 1, source=command.source)]


def _erased(state: PolicySetState, command: FollowAgent) -> list[PolicySetEvent]:
    """An erased agent's active set forbids it every action: the set must not keep what it had (fail closed). No
    set (the agent had no policies of its own: nothing to keep) and a retired one (with its agent) stay so."""
    cedar = erased_policy_text(command.agent_id)
    if state.status != "active" or state.cedar == cedar:
        return []
    compile_policies(state.set_id, cedar)
    return [PolicySetUpdated(cedar=cedar, revision=state.revision + 1, source=max(state.source, command.source))]


def _require_active(state: PolicySetState, command: str) -> None:
    if state.status is None:
        raise NotFound(f"policy set {state.set_id} does not exist; register it first", set_id=state.set_id)
    if state.status != "active":
        raise IllegalTransition(state=state.status, command=f"{command} policy set", allowed=[])


#: The policy-set aggregate type, as :class:`symbi_common.aggregate.Repository` expects it.
POLICY_SET: AggregateType[PolicySetState, SetCommand, PolicySetEvent] = AggregateType(
    AGGREGATE_TYPE,
    POLICY_SET_CODEC,
    PolicySetState,
    lambda set_id: PolicySetState(set_id=set_id),
    apply_policy_event,
    decide_set,
)


# --- decision logs -------------------------------------------------------------------------------------


class LogState(msgspec.Struct, frozen=True, kw_only=True):
    """What a decision log needs to decide: how many it stored and the ids of its recent batches."""

    log_id: str
    stored: int = 0
    denials: int = 0
    recent_batches: tuple[str, ...] = ()


class LogBatch(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: str
    entries: tuple[LoggedDecision, ...]


def log_id_for(source: str) -> str:
    """The aggregate id of a source's decision log (``decisions.<source>``)."""
    if not SOURCE_RE.match(source):
        raise ValidationError("must be 1-128 letters, digits, '-' or '_'", field="source")
    return f"{DECISION_LOG_PREFIX}{source}"


def decide_log(state: LogState, command: LogBatch) -> list[DecisionLogEvent]:
    if command.batch_id in state.recent_batches or not command.entries:
        return []
    allowed = tuple(e for e in command.entries if e.record.effect != "deny")
    events: list[DecisionLogEvent] = []
    if allowed:
        events.append(DecisionsLogged(batch_id=command.batch_id, entries=allowed))
    events.extend(
        ActionDenied(batch_id=command.batch_id, entry=e) for e in command.entries if e.record.effect == "deny"
    )
    return events


def apply_log(state: LogState, event: DecisionLogEvent) -> LogState:
    recent = state.recent_batches
    if event.batch_id not in recent:
        recent = (*recent[-(RECENT_BATCHES - 1) :], event.batch_id)
    if isinstance(event, DecisionsLogged):
        return msgspec.structs.replace(state, stored=state.stored + len(event.entries), recent_batches=recent)
    return msgspec.structs.replace(state, stored=state.stored + 1, denials=state.denials + 1, recent_batches=recent)


DECISION_LOG: AggregateType[LogState, LogBatch, DecisionLogEvent] = AggregateType(
    AGGREGATE_TYPE, DECISION_LOG_CODEC, LogState, lambda log_id: LogState(log_id=log_id), apply_log, decide_log
)
