"""Agent schedules: when each ``schedule`` block of an agent fires, and the audited firing event.

An agent's ``AgentConfig.schedules`` (compiled from the DSL) are active while the agent is enabled
(Ready, Running or Suspended; not Failed or Terminated). At each cron firing — computed in the
schedule's own timezone, so 09:00 Europe/Berlin stays 09:00 across daylight-saving changes — the
scheduler appends ``schedule.fired`` to ``evt.schedule.<agent_id>`` and submits a task whose id is
derived from (agent, schedule, firing instant).

No double firing: only the lease holder fires; the firing is a conditional append on the agent's
schedule aggregate (a second replica racing it gets a conflict and re-reads); and the task id is
deterministic, so even a repeated submission is refused as already existing.

Missed firings (the scheduler was down, or no replica held the lease): on catching up, a schedule
fires **once** for the latest instant it missed and records how many earlier instants it skipped
(``missed``) — work is not replayed in bulk after an outage. Firings from before the agent was
enabled never count. A one-shot schedule fires once, ever.

The functions here are pure; :mod:`symbi_scheduler.application` does the appending.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import croniter  # type: ignore[import-untyped]
from symbi_common.errors import ValidationError
from symbi_common.events import Event, EventCodec
from symbi_contracts.lifecycle.config import AgentConfig, ScheduleSpec
from symbi_contracts.scheduler.events import TaskSubmitted

AGGREGATE_TYPE = "schedule"
#: How many missed instants are counted at most (a per-second cron after a month's outage stops counting).
MAX_COUNTED = 10_000


class ScheduleFired(Event, frozen=True, tag="schedule.fired"):
    """The agent's schedule fired for instant ``fire_at`` (Unix seconds) and submitted ``task_id``."""

    schedule: str
    cron: str
    timezone: str
    fire_at: float
    task_id: str
    missed: int = 0
    one_shot: bool = False


ScheduleEvent = ScheduleFired
CODEC: EventCodec[ScheduleEvent] = EventCodec([ScheduleFired])


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)", field="timezone") from None


def check_spec(spec: ScheduleSpec) -> None:
    """Raise :class:`ValidationError` if the cron expression or the timezone is not usable."""
    zone(spec.timezone)
    if not croniter.is_valid(spec.cron):
        raise ValidationError(f"{spec.cron!r} is not a cron expression", field="cron")


def task_id_for(agent_id: str, schedule: str, fire_at: float) -> str:
    """The task a firing submits: the same (agent, schedule, instant) always gives the same id."""
    digest = hashlib.sha256(f"{agent_id}\x00{schedule}\x00{fire_at:.0f}".encode()).hexdigest()[:32]
    return f"sched-{digest}"


@dataclass(frozen=True, slots=True)
class Due:
    """A firing to do now: the instant it is for and how many earlier instants were skipped."""

    spec: ScheduleSpec
    fire_at: float
    missed: int


def due(spec: ScheduleSpec, *, after: float, now: float) -> Due | None:
    """The firing of ``spec`` due at ``now`` given that everything up to ``after`` is done (or not owed)."""
    tz = zone(spec.timezone)
    it = croniter(spec.cron, dt.datetime.fromtimestamp(after, tz))
    first = float(it.get_next(float))
    if first > now:
        return None
    latest, missed = first, 0
    while missed < MAX_COUNTED:
        following = float(it.get_next(float))
        if following > now:
            break
        latest, missed = following, missed + 1
    return Due(spec, latest, missed)


def next_firing(spec: ScheduleSpec, *, after: float) -> float:
    """The next instant ``spec`` fires after ``after`` (Unix seconds)."""
    it = croniter(spec.cron, dt.datetime.fromtimestamp(after, zone(spec.timezone)))
    return float(it.get_next(float))


def fired_event(agent_id: str, firing: Due) -> ScheduleFired:
    """The ``schedule.fired`` event of a due firing (its task id derived from agent, schedule and instant)."""
    spec = firing.spec
    return ScheduleFired(
        schedule=spec.name,
        cron=spec.cron,
        timezone=spec.timezone,
        fire_at=firing.fire_at,
        task_id=task_id_for(agent_id, spec.name, firing.fire_at),
        missed=firing.missed,
        one_shot=spec.one_shot,
    )


def submission_for(agent_id: str, config: AgentConfig, fired: ScheduleFired) -> TaskSubmitted | None:
    """The task a firing submits, from the agent's schedule (None if the agent no longer has it)."""
    spec = next((s for s in config.schedules if s.name == fired.schedule), None)
    if spec is None:
        return None
    return TaskSubmitted(
        agent_id=agent_id,
        input=spec.input.encode(),
        priority=spec.priority if spec.priority in ("low", "normal", "high", "critical") else "normal",
        submitted_by=f"schedule:{spec.name}",
        schedule=spec.name,
    )


# --- the schedule aggregate (``schedule.<agent_id>``) -------------------------------------------------


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True):
    """The last instant each of an agent's schedules fired for."""

    agent_id: str
    last_fired: dict[str, float] = msgspec.field(default_factory=dict)


class Fire(msgspec.Struct, frozen=True, kw_only=True):
    event: ScheduleFired


class ScheduleAggregate:
    """A firing is appended only if the schedule has not fired for that instant (or a later one) yet."""

    aggregate_type = AGGREGATE_TYPE
    codec = CODEC
    state_type = ScheduleState

    def initial(self, aggregate_id: str) -> ScheduleState:
        return ScheduleState(agent_id=aggregate_id)

    def apply(self, state: ScheduleState, event: ScheduleEvent) -> ScheduleState:
        fired = dict(state.last_fired)
        fired[event.schedule] = max(fired.get(event.schedule, 0.0), event.fire_at)
        return ScheduleState(agent_id=state.agent_id, last_fired=fired)

    def decide(self, state: ScheduleState, command: Fire) -> list[ScheduleEvent]:
        event = command.event
        if state.last_fired.get(event.schedule, -1.0) >= event.fire_at:
            return []  # another replica (or our previous life) fired it already
        if event.one_shot and event.schedule in state.last_fired:
            return []
        return [event]


SCHEDULE = ScheduleAggregate()
