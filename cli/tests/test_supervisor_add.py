"""Services added to a running supervisor (a runtime's database services, once PostgreSQL is up): launched,
waited for and stopped like the first ones; a name twice, or an addition once stopping, is refused."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable

import pytest
from symbi_cli.errors import SupervisorError
from symbi_cli.supervisor import EventKind, ServiceSpec, Supervisor


def sleeper(name: str) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        argv=[sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        env=dict(os.environ),
    )


async def test_added_services_run_under_the_same_supervisor_and_stop_with_it(alive: Callable[[int], bool]) -> None:
    lines: list[tuple[str, str]] = []
    events: list[tuple[str, str, EventKind]] = []
    sup = Supervisor(
        [sleeper("policy")],
        on_output=lambda name, line: lines.append((name, line)),
        on_event=lambda name, message, kind: events.append((name, message, kind)),
        grace_period=2,
    )
    try:
        await sup.start()
        await sup.add([sleeper("lifecycle"), sleeper("audit")])
        assert sup.names == ["policy", "lifecycle", "audit"]
        await sup.wait_ready(timeout=10)
        deadline = time.monotonic() + 10
        while {name for name, line in lines if line == "up"} != {"policy", "lifecycle", "audit"}:
            assert time.monotonic() < deadline, lines
            await asyncio.sleep(0.02)
        pids = sup.pids()
        assert set(pids) == {"policy", "lifecycle", "audit"}
        assert all(alive(pid) for pid in pids.values())

        with pytest.raises(ValueError, match="unique: lifecycle"):
            await sup.add([sleeper("lifecycle")])
        with pytest.raises(ValueError, match="unique"):
            await sup.add([sleeper("context"), sleeper("context")])
        assert sup.names == ["policy", "lifecycle", "audit"]
    finally:
        await sup.stop()
    assert not any(alive(pid) for pid in pids.values())
    assert {name for name, message, _ in events if message.startswith("stopped")} == {"policy", "lifecycle", "audit"}

    with pytest.raises(SupervisorError, match="stopping"):
        await sup.add([sleeper("scheduler")])
    assert "scheduler" not in sup.names
