"""The built-in frameworks select the events they promise (pure: no service needed)."""

from __future__ import annotations

import pytest
from symbi_audit.reports import HIPAA


@pytest.mark.parametrize(
    ("event_type", "listed"),
    [
        ("execution.output", True),
        ("execution.exited", True),  # a terminal event carries the run's last output (its tail)
        ("execution.killed", True),
        ("execution.started", False),
        ("execution.refused", False),  # never ran: no output
    ],
)
def test_hipaa_lists_task_outputs_wherever_they_travel(event_type: str, listed: bool) -> None:
    outputs = HIPAA.sections[0]
    assert outputs.matches({"event_type": event_type, "producer": "sandbox-agent"}) is listed
