"""Which execution events may carry output: one list, kept in line with the event types themselves."""

from __future__ import annotations

from symbi_contracts.sandbox_agent.events import (
    OUTPUT_EVENT_TYPES,
    TERMINAL_TYPES,
    ExecutionOutput,
    ExecutionRefused,
)


def tag(event_type: type) -> str:
    return str(event_type.__struct_config__.tag)


def test_every_event_that_can_carry_output_is_listed_and_no_other() -> None:
    carrying = {tag(ExecutionOutput)} | {tag(t) for t in TERMINAL_TYPES if t is not ExecutionRefused}
    assert set(OUTPUT_EVENT_TYPES) == carrying
    assert len(OUTPUT_EVENT_TYPES) == len(carrying)
