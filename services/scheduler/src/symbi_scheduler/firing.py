"""Firing agents' schedules (the lease holder only): ``schedule.fired``, then the task it submits.

Which schedules are due is derived from the model (:func:`symbi_scheduler.chores.firings_due`); the firing
is a conditional append on the agent's schedule aggregate, which refuses an instant already fired, and the
task id is derived from (agent, schedule, instant), so a repeated submission is refused, never doubled.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from symbi_common.aggregate import Repository
from symbi_common.errors import AlreadyExists, ValidationError

from symbi_scheduler.chores import firings_due
from symbi_scheduler.effects import Effects
from symbi_scheduler.schedules import Fire, ScheduleEvent, ScheduleFired, ScheduleState, fired_event, submission_for

log = structlog.get_logger(__name__)


class ScheduleFirer:
    """Fires what is due each round, and submits the task of a firing a crash left without one."""

    def __init__(
        self,
        fx: Effects,
        schedules: Repository[ScheduleState, Fire, ScheduleEvent],
        note_error: Callable[[str], None],
    ) -> None:
        self.fx = fx
        self.model = fx.model
        self.schedules = schedules
        self.note_error = note_error
        self._broken: set[tuple[str, str]] = set()
        #: Firings whose task the task aggregate refused (its input): not submitted again.
        self._refused: set[str] = set()

    async def fire_due(self, now: float) -> None:
        firings, bad = firings_due(self.model, now, broken=self._broken)
        for (agent_id, schedule), exc in bad:
            self._broken.add((agent_id, schedule))
            self.note_error(f"schedule {schedule} of agent {agent_id}: {exc}")
        for agent_id, firing in firings:
            await self._fire(agent_id, fired_event(agent_id, firing))
        # A firing recorded without its task (a crash between the two appends): submit it now.
        for task_id, (agent_id, fired) in list(self.model.fired_pending.items()):
            if task_id not in self._refused:
                await self._submit(task_id, agent_id, fired)

    async def _fire(self, agent_id: str, event: ScheduleFired) -> None:
        _, records = await self.schedules.execute(agent_id, Fire(event=event), correlation_id=event.task_id)
        for rec in records:
            h = rec.header
            self.model.apply("schedule", agent_id, h.aggregate_version, rec.sequence, h.occurred_at / 1e9, rec.event)
        if records:
            log.info(
                "schedule fired", agent_id=agent_id, schedule=event.schedule, task_id=event.task_id, missed=event.missed
            )
            await self._submit(event.task_id, agent_id, event)

    async def _submit(self, task_id: str, agent_id: str, fired: ScheduleFired) -> None:
        agent = self.model.agents.get(agent_id)
        if agent is None or agent.config is None:
            return
        submitted = submission_for(agent_id, agent.config, fired)
        if submitted is None:
            return
        try:
            await self.fx.record(task_id, submitted)
        except AlreadyExists:
            pass
        except ValidationError as exc:  # (a schedule stored before its input was checked): no task, said once
            self._refused.add(task_id)
            self.note_error(f"schedule {fired.schedule} of agent {agent_id}: its task {task_id} was refused: {exc}")
