"""Who calls, as far as budgets go: the tenant and the agent's own budget, from the task's ``task.assigned``
(the scheduler copies them from the agent's definition). Never from the request."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from symbi_common.eventstore import EventStore
from symbi_contracts.scheduler.events import AGGREGATE_TYPE

from symbi_sandbox_agent.egress.internal import Caller
from symbi_sandbox_agent.models.budget import TENANT, Limit
from symbi_sandbox_agent.models.errors import ModelDenied
from symbi_sandbox_agent.tasks import TASK_CODEC, fold_task


@dataclass(frozen=True, slots=True)
class Budgeted:
    """A caller with the tenant its budget counts against and its agent's own limit."""

    agent_id: str
    task_id: str
    tenant: str
    limit: Limit


class CallerDirectory:
    """Reads (and remembers) each task's tenant and agent budget."""

    def __init__(self, store: EventStore, size: int = 4096) -> None:
        self.store = store
        self.size = size
        self._known: OrderedDict[str, Budgeted] = OrderedDict()

    async def of(self, caller: Caller) -> Budgeted:
        """:class:`ModelDenied` for a caller whose task is not this agent's, not assigned, or of another tenant."""
        key = caller.task_id
        known = self._known.get(key)
        if known is not None and known.agent_id == caller.agent_id:
            return known
        records = await self.store.load(AGGREGATE_TYPE, caller.task_id, TASK_CODEC)
        view = fold_task(caller.task_id, [r.event for r in records])
        if view.assigned is None or view.agent_id != caller.agent_id or view.ended:
            raise ModelDenied(f"task {caller.task_id} is not a running task of agent {caller.agent_id}")
        assigned = view.assigned
        tenant = assigned.tenant
        if not TENANT.match(tenant):
            raise ModelDenied(f"the tenant {tenant[:80]!r} of agent {caller.agent_id} is not a valid tenant name")
        if caller.tenant != tenant and caller.tenant != "default":
            raise ModelDenied(f"the caller's tenant {caller.tenant!r} is not its agent's ({tenant!r})")
        budget = assigned.budget
        found = Budgeted(
            caller.agent_id, caller.task_id, tenant, Limit(budget.tokens_per_day, budget.micro_usd_per_day)
        )
        self._known[key] = found
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return found
