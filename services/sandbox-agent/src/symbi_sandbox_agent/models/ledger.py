"""The write path of the budgets: reserve (after Cedar decided on what is left), reconcile, release.

Each tenant's day is one aggregate. A reservation is decided on the state the gateway has read and appended
with that state's version as the expected one, so if another gateway (another host) appended meanwhile the
append is refused, the state is caught up and Cedar asked again: two calls can never both take the last of a
budget. Within one process the calls of one aggregate take turns (a lock), so they do not conflict in vain.

A reservation whose append could not be confirmed (its ack lost) may have landed: the ledger reads the day again
and uses the hold if it did; otherwise it appends a release of it (a release of a reservation that never landed
changes nothing), so a hold nobody knows of never counts against the budget for the rest of the day.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

import structlog
from symbi_common.decisions import Decision, DecisionRecord
from symbi_common.errors import AppendFailed, ConcurrencyConflict
from symbi_common.eventstore import EventStore, Recorded
from symbi_common.sealing import ChainTip
from symbi_contracts.models.events import AGGREGATE_TYPE, CODEC, BudgetEvent, BudgetReleased, BudgetReserved

from symbi_sandbox_agent.models.budget import BudgetState, Limit, aggregate_id, apply, budget_context, day_of, initial
from symbi_sandbox_agent.models.errors import ModelUnavailable
from symbi_sandbox_agent.models.pricing import Spend

log = structlog.get_logger(__name__)

#: Appends one call may try before it gives up (each after catching up with the other writers).
MAX_ATTEMPTS = 64
Ask = Callable[[dict[str, object]], Awaitable[tuple[Decision, DecisionRecord]]]


@dataclass(frozen=True, slots=True)
class Loaded:
    state: BudgetState
    tip: ChainTip


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation made: where it is, and the decision that allowed it."""

    aggregate_id: str
    event: BudgetReserved
    decision: Decision
    record: DecisionRecord


class BudgetLedger:
    """``tenants``: each tenant's budget per day (a tenant not named has none)."""

    def __init__(self, store: EventStore, tenants: Mapping[str, Limit]) -> None:
        self.store = store
        self.tenants = dict(tenants)
        self._cache: dict[str, Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.conflicts = 0

    def tenant_limit(self, tenant: str) -> Limit:
        return self.tenants.get(tenant, Limit())

    async def _caught_up(self, aggregate: str) -> Loaded:
        loaded = self._cache.get(aggregate) or Loaded(initial(aggregate), ChainTip())
        records = await self.store.load(AGGREGATE_TYPE, aggregate, CODEC, after=loaded.tip)
        return self._fold(aggregate, loaded, records)

    def _fold(self, aggregate: str, loaded: Loaded, records: list[Recorded[BudgetEvent]]) -> Loaded:
        state, tip = loaded.state, loaded.tip
        for rec in records:
            state, tip = apply(state, rec.event), rec.tip
        folded = Loaded(state, tip)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[aggregate] = folded
        return folded

    async def context(self, tenant: str, agent_id: str, agent_limit: Limit, requested: Spend) -> dict[str, object]:
        """``context.budget`` for a question asked outside a reservation (listing models)."""
        aggregate = aggregate_id(day_of(), tenant)
        loaded = self._cache.get(aggregate) or await self._caught_up(aggregate)
        return budget_context(loaded.state, agent_id, agent_limit, self.tenant_limit(tenant), requested)

    async def state(self, tenant: str, day: str | None = None) -> BudgetState:
        """The tenant's day as stored now (read fresh)."""
        return (await self._caught_up(aggregate_id(day or day_of(), tenant))).state

    async def reserve(
        self, tenant: str, agent_limit: Limit, event: BudgetReserved, ask: Ask
    ) -> Hold | tuple[Decision, DecisionRecord, dict[str, object]]:
        """Ask Cedar with what is left, then hold ``event``'s tokens and money. A denial is returned (with the
        context it was decided on), not raised: the caller names the budget it ran out of."""
        aggregate = aggregate_id(day_of(), tenant)
        requested = Spend(event.tokens, event.micro_usd)
        lock = self._locks.setdefault(aggregate, asyncio.Lock())
        for attempt in range(MAX_ATTEMPTS):
            async with lock:
                loaded = self._cache.get(aggregate) or await self._caught_up(aggregate)
                context = budget_context(
                    loaded.state, event.agent_id, agent_limit, self.tenant_limit(tenant), requested
                )
                decision, record = await ask(context)
                if record.effect == "deny":
                    return decision, record, context
                hold = Hold(aggregate, event, decision, record)
                try:
                    if await self._append(aggregate, loaded, event):
                        return hold
                except AppendFailed as exc:
                    if await self._landed(hold):
                        return hold
                    await self._release_unconfirmed(hold, exc)
            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))  # let the other writer finish
        raise ModelUnavailable(f"the budget of tenant {tenant} is too contended; try again", retry_after=1.0)

    async def _landed(self, hold: Hold) -> bool:
        """Whether ``hold``'s reservation, appended without a confirmation, is in the stored day after all."""
        try:
            return hold.event.reservation_id in (await self._caught_up(hold.aggregate_id)).state.open
        except Exception as exc:  # cannot tell: it is released as if it had landed
            log.warning(
                "a reservation's append could not be checked", reservation=hold.event.reservation_id, error=repr(exc)
            )
            return False

    async def _release_unconfirmed(self, hold: Hold, exc: AppendFailed) -> NoReturn:
        """Release ``hold``'s reservation, which may have landed unseen (called under the aggregate's lock), and
        refuse the call as unavailable."""
        rid = hold.event.reservation_id
        release = BudgetReleased(reservation_id=rid, reason=f"its append could not be confirmed: {exc.message}"[:500])
        try:
            await self._settle_locked(hold.aggregate_id, release)
        except Exception as release_exc:  # it stays held if it landed: it counts against the budget (fail closed)
            log.error("an unconfirmed reservation could not be released", reservation=rid, error=repr(release_exc))
        raise ModelUnavailable(f"the budget reservation could not be stored: {exc.message}", retry_after=1.0) from exc

    async def _append(self, aggregate: str, loaded: Loaded, event: BudgetEvent) -> bool:
        """Append ``event`` at ``loaded``'s tip and fold it; False (caught up again) if another writer was first."""
        try:
            records = await self.store.append(AGGREGATE_TYPE, aggregate, [event], CODEC, expected=loaded.tip)
        except ConcurrencyConflict:
            self.conflicts += 1
            await self._caught_up(aggregate)
            return False
        self._fold(aggregate, loaded, records)
        return True

    async def settle(self, aggregate: str, event: BudgetEvent) -> None:
        """Append a reconciliation or release of a reservation of ``aggregate`` (no decision: it only gives back)."""
        async with self._locks.setdefault(aggregate, asyncio.Lock()):
            await self._settle_locked(aggregate, event)

    async def _settle_locked(self, aggregate: str, event: BudgetEvent) -> None:
        for attempt in range(MAX_ATTEMPTS):
            loaded = self._cache.get(aggregate) or await self._caught_up(aggregate)
            if await self._append(aggregate, loaded, event):
                return
            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise ModelUnavailable(f"the budget {aggregate} is too contended to settle a reservation")
