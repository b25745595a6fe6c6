"""The policy events every decision point follows, and the decision-log events.

Only the policy service writes them (its key may sign ``evt.policy.>``), but every service reads them:
the embedded decision point folds the policy-set events into its engine. Subjects:

- ``evt.policy.<set_id>`` — one policy set (a single token): registered, updated, retired;
- ``evt.policy.decisions.<source>`` — the decision log of one enforcing process (two tokens, so
  followers of ``evt.policy.*`` never see it): batches of logged decisions, and each denial as an
  event of its own.
"""

from __future__ import annotations

import msgspec

from symbi_common.decisions import DecisionRecord, DecisionRequest
from symbi_common.events import Event, EventCodec

AGGREGATE_TYPE = "policy"
#: Subject filter of the policy-set events (not the decision log).
POLICY_SETS_SUBJECT = "evt.policy.*"
DECISION_LOG_PREFIX = "decisions."
DECISION_LOG_SUBJECT = "evt.policy.decisions.>"


class PolicySetRegistered(Event, frozen=True, tag="policy.set_registered"):
    """A policy set was accepted (it parsed and validated) and is active from this event on."""

    set_id: str
    cedar: str
    revision: int = 1
    description: str = ""
    origin: str = "operator"
    """Who asked: ``operator``, ``baseline`` or ``agent:<agent_id>``."""
    source: int = 0
    """An agent's set: the stream sequence of the agent event this change follows (0: not from one)."""


class PolicySetUpdated(Event, frozen=True, tag="policy.set_updated"):
    """The set's text was replaced; the new revision is active from this event on."""

    cedar: str
    revision: int
    source: int = 0


class PolicySetRetired(Event, frozen=True, tag="policy.set_retired"):
    """The set no longer takes part in decisions."""

    reason: str
    revision: int
    source: int = 0


PolicySetEvent = PolicySetRegistered | PolicySetUpdated | PolicySetRetired
POLICY_SET_CODEC: EventCodec[PolicySetEvent] = EventCodec((PolicySetRegistered, PolicySetUpdated, PolicySetRetired))


class LoggedDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One decision made at an enforcement point, with the request it answered (for what-if replays)."""

    request: DecisionRequest
    record: DecisionRecord
    at_ns: int
    service: str


class DecisionsLogged(Event, frozen=True, tag="policy.decisions_logged"):
    """A batch of decisions of one enforcing process."""

    batch_id: str
    entries: tuple[LoggedDecision, ...]


class ActionDenied(Event, frozen=True, tag="policy.action_denied"):
    """An action was denied and not performed: an event of its own, so it shows in the audit trail."""

    batch_id: str
    entry: LoggedDecision


DecisionLogEvent = DecisionsLogged | ActionDenied
DECISION_LOG_CODEC: EventCodec[DecisionLogEvent] = EventCodec((DecisionsLogged, ActionDenied))


# --- the state one policy set's events leave (shared by the policy service and every follower) -----


class PolicySetState(msgspec.Struct, frozen=True, kw_only=True):
    """A policy set as its events left it; ``status`` is None before it is registered."""

    set_id: str
    status: str | None = None  # "active" | "retired"
    cedar: str = ""
    revision: int = 0
    description: str = ""
    origin: str = ""
    retired_reason: str = ""
    #: The newest agent event an agent's set followed (its stream sequence; 0: none).
    source: int = 0

    @property
    def active(self) -> bool:
        return self.status == "active"


def apply_policy_event(state: PolicySetState, event: PolicySetEvent) -> PolicySetState:
    """The state after ``event``. Pure."""
    match event:
        case PolicySetRegistered():
            return PolicySetState(
                set_id=state.set_id,
                status="active",
                cedar=event.cedar,
                revision=event.revision,
                description=event.description,
                origin=event.origin,
                source=event.source,
            )
        case PolicySetUpdated():
            source = max(state.source, event.source)
            return msgspec.structs.replace(state, cedar=event.cedar, revision=event.revision, source=source)
        case PolicySetRetired():
            source = max(state.source, event.source)
            return msgspec.structs.replace(
                state, status="retired", revision=event.revision, retired_reason=event.reason, source=source
            )
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - the union is exhaustive
