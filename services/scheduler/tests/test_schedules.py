"""Agent schedules: cron firings in the schedule's timezone, missed firings, and no double firing."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from schedkit import App, FakeHost, eventually, register_agent, until_status
from symbi_common.errors import ValidationError
from symbi_contracts.lifecycle.config import ScheduleSpec
from symbi_scheduler.schedules import CODEC, ScheduleFired, check_spec, due, next_firing, task_id_for

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: ZoneInfo = BERLIN) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def test_firings_follow_the_schedules_timezone_across_daylight_saving() -> None:
    spec = ScheduleSpec(name="morning", cron="0 9 * * *", timezone="Europe/Berlin")
    before_dst = next_firing(spec, after=ts(2026, 3, 27, 12, 0))  # clocks go forward on 29 March
    after_dst = next_firing(spec, after=before_dst)
    assert dt.datetime.fromtimestamp(before_dst, BERLIN).hour == 9
    assert dt.datetime.fromtimestamp(after_dst, BERLIN).hour == 9
    assert after_dst - before_dst == 23 * 3600  # the night the clocks go forward is an hour short


def test_missed_firings_fire_once_for_the_latest_instant() -> None:
    spec = ScheduleSpec(name="hourly", cron="0 * * * *", timezone="UTC")
    utc = ZoneInfo("UTC")
    firing = due(spec, after=ts(2026, 1, 1, 0, 0, tz=utc), now=ts(2026, 1, 1, 5, 30, tz=utc))
    assert firing is not None
    assert firing.fire_at == ts(2026, 1, 1, 5, 0, tz=utc)
    assert firing.missed == 4  # 01:00 .. 04:00 were skipped
    assert due(spec, after=firing.fire_at, now=ts(2026, 1, 1, 5, 59, tz=utc)) is None


def test_task_ids_of_firings_are_deterministic() -> None:
    assert task_id_for("a", "s", 100.0) == task_id_for("a", "s", 100.0)
    assert task_id_for("a", "s", 100.0) != task_id_for("a", "s", 101.0)
    assert task_id_for("a", "s", 100.0) != task_id_for("b", "s", 100.0)


@pytest.mark.parametrize(
    ("cron", "zone", "field"), [("not a cron", "UTC", "cron"), ("* * * * *", "Mars/Olympus", "timezone")]
)
def test_bad_specs_are_typed_errors(cron: str, zone: str, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_spec(ScheduleSpec(name="x", cron=cron, timezone=zone))
    assert err.value.field == field


async def test_two_replicas_fire_each_instant_once(
    lifecycle: App, start_scheduler: Any, hosts: Any, make_store: Any
) -> None:
    schedules = [
        {
            "name": "every-second",
            "cron": "* * * * * *",
            "timezone": "Europe/Berlin",
            "input": "tick",
            "priority": "high",
        },
        {"name": "once", "cron": "* * * * * *", "one_shot": True, "input": "boot"},
    ]
    await register_agent(lifecycle, "cron-agent", schedules=schedules)
    host: FakeHost = await hosts("h1")
    async with start_scheduler(replica_id="a") as a, start_scheduler(replica_id="b"):
        store = await make_store("scheduler")

        async def fired() -> list[ScheduleFired] | None:
            events = [r.event for r in await store.load("schedule", "cron-agent", CODEC)]
            return events if sum(e.schedule == "every-second" for e in events) >= 3 else None

        events = await eventually(fired, timeout=15)
        await asyncio.sleep(1.0)
        events = [r.event for r in await store.load("schedule", "cron-agent", CODEC)]
        ticks = [e for e in events if e.schedule == "every-second"]
        assert len({e.fire_at for e in ticks}) == len(ticks)  # no instant fired twice
        assert all(later.fire_at > earlier.fire_at for earlier, later in itertools.pairwise(ticks))
        assert [e.schedule for e in events].count("once") == 1
        for e in events:
            assert e.task_id == task_id_for("cron-agent", e.schedule, e.fire_at)
            view = await until_status(a, e.task_id, "queued", "assigned", "completed")
            assert view["schedule"] == e.schedule
            assert view["submitted_by"] == f"schedule:{e.schedule}"
        first_tick = await until_status(a, ticks[0].task_id, "completed")
        assert first_tick["priority"] == "high"
    assert len(host.started) == len({t for t, _ in host.started})
