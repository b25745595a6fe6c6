"""The ``budget.<YYYYMMDD>-<tenant>`` events the model gateway writes (subject ``evt.budget.<day>-<tenant>``).

One aggregate per tenant and UTC day holds every model call of the tenant's agents that day: a call first
*reserves* what it may cost at most (its prompt estimate plus ``max_tokens``, priced), then the reservation is
*reconciled* with the usage the provider reported, or *released* when the call failed or was cancelled.
Appends carry the expected version, so two gateways (on two hosts) cannot both reserve the last of a budget.
Readers: the audit service (usage reports). Evolve only by adding fields with defaults.
"""

from __future__ import annotations

from symbi_common.events import Event, EventCodec

AGGREGATE_TYPE = "budget"


class BudgetReserved(Event, frozen=True, kw_only=True, tag="budget.reserved"):
    """A call's most it may cost, held against the agent's and the tenant's budgets of the day."""

    reservation_id: str
    agent_id: str
    task_id: str
    #: ``provider/model``.
    model: str
    tokens: int
    micro_usd: int
    #: What the gateway's policy decision allowed it (``DecisionRecord`` fields in short).
    policy_version: int = 0


class BudgetReconciled(Event, frozen=True, kw_only=True, tag="budget.reconciled"):
    """The call ended: what it really cost replaces the reservation (``estimated``: the provider reported no
    usage, so the gateway counted the reply itself)."""

    reservation_id: str
    input_tokens: int
    output_tokens: int
    micro_usd: int
    estimated: bool = False
    #: The reservation's agent and model again, so usage reports read this event alone.
    agent_id: str = ""
    model: str = ""


class BudgetReleased(Event, frozen=True, kw_only=True, tag="budget.released"):
    """The call failed or was cancelled before the provider charged for it: the reservation is given back."""

    reservation_id: str
    reason: str


BudgetEvent = BudgetReserved | BudgetReconciled | BudgetReleased
EVENT_TYPES: tuple[type[BudgetEvent], ...] = (BudgetReserved, BudgetReconciled, BudgetReleased)
CODEC: EventCodec[BudgetEvent] = EventCodec(EVENT_TYPES)
