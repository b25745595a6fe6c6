"""A schedule's settings are checked at registration, so each of its firings makes a task the scheduler takes."""

from __future__ import annotations

from symbi_contracts.scheduler.events import MAX_INPUT_BYTES
from symbi_lifecycle.config import convert_config, validate_config


def test_a_schedule_whose_tasks_would_be_refused_is_refused_at_registration() -> None:
    def schedule(**fields: object) -> dict[str, object]:
        return {"name": "nightly", "cron": "0 3 * * *", **fields}

    config = convert_config(
        {
            "name": "cron-job",
            "schedules": [
                schedule(input="x" * (MAX_INPUT_BYTES + 1)),
                schedule(name="bad", cron="every night", timezone="Mars/Olympus", priority="asap"),
            ],
        }
    )
    issues = {i.field: i.message for i in validate_config(config)}
    assert issues["schedules[0].input"] == f"at most {MAX_INPUT_BYTES} bytes (a task's input)"
    assert "is not a cron expression" in issues["schedules[1].cron"]
    assert "is not a time zone" in issues["schedules[1].timezone"]
    assert "must be one of" in issues["schedules[1].priority"]
    fine = convert_config({"name": "cron-job", "schedules": [schedule(input="x" * MAX_INPUT_BYTES)]})
    assert validate_config(fine) == []
