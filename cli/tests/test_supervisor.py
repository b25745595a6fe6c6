"""The supervisor with real child processes: back-off, stop escalation, process-group clean-up."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from symbi_cli.errors import SupervisorError
from symbi_cli.supervisor import EventKind, RestartPolicy, ServiceSpec, Supervisor


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, EventKind]] = []

    def output(self, service: str, line: str) -> None:
        self.lines.append((service, line))

    def event(self, service: str, message: str, kind: EventKind) -> None:
        self.events.append((service, message, kind))

    def backoffs(self) -> list[float]:
        return [float(m.group(1)) for _, msg, _ in self.events if (m := re.search(r"restarting in ([\d.]+) s", msg))]


def python(code: str, name: str = "svc") -> ServiceSpec:
    return ServiceSpec(name=name, argv=[sys.executable, "-c", code], env=dict(os.environ))


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    rec = Recorder()
    crash = python("print('starting', flush=True); raise SystemExit(3)", "crashy")
    policy = RestartPolicy(initial_backoff=0.05, max_backoff=0.4, stable_after=30.0)
    async with Supervisor([crash], policy=policy, on_output=rec.output, on_event=rec.event) as sup:
        await until(lambda: sup.status("crashy").starts >= 6)
        status = sup.status("crashy")
    assert status.last_exit == 3
    assert rec.backoffs()[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]
    assert ("crashy", "starting") in rec.lines
    assert any("exit code 3" in msg for _, msg, _ in rec.events)


async def test_a_stable_run_resets_the_back_off() -> None:
    rec = Recorder()
    # Runs longer than stable_after, then fails: every restart waits only the initial back-off.
    flaky = python("import time; time.sleep(0.3); raise SystemExit(1)", "flaky")
    policy = RestartPolicy(initial_backoff=0.05, max_backoff=5.0, stable_after=0.2)
    async with Supervisor([flaky], policy=policy, on_event=rec.event) as sup:
        await until(lambda: sup.status("flaky").starts >= 4)
    assert rec.backoffs()[:3] == [0.05, 0.05, 0.05]


async def test_stop_escalates_to_sigkill_and_clears_the_process_group(
    tmp_path: Path, alive: Callable[[int], bool]
) -> None:
    rec = Recorder()
    child_pid_file = tmp_path / "grandchild.pid"
    stubborn = python(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n",
        "stubborn",
    )
    polite = python("import time; print('ready', flush=True); time.sleep(60)", "polite")
    sup = Supervisor([stubborn, polite], on_output=rec.output, on_event=rec.event, grace_period=0.5)
    await sup.start()
    await until(lambda: ("stubborn", "ready") in rec.lines and ("polite", "ready") in rec.lines)
    pids = sup.pids()
    grandchild = int(child_pid_file.read_text())

    started = time.monotonic()
    await sup.stop()
    await sup.stop()  # idempotent
    assert time.monotonic() - started < 5

    assert not alive(pids["stubborn"])
    assert not alive(pids["polite"])
    await until(lambda: not alive(grandchild), timeout=2)
    assert sup.status("stubborn").last_exit == -9
    assert sup.status("polite").last_exit is not None
    assert any("SIGKILL" in msg for name, msg, _ in rec.events if name == "stubborn")
    assert not any("SIGKILL" in msg for name, msg, _ in rec.events if name == "polite")


async def test_wait_ready_times_out_with_the_service_output() -> None:
    never = ServiceSpec(
        name="never",
        argv=[sys.executable, "-c", "import time; print('cannot bind', flush=True); time.sleep(60)"],
        env=dict(os.environ),
        ready_url="http://127.0.0.1:9/readyz",
    )
    async with Supervisor([never], grace_period=1) as sup:
        with pytest.raises(SupervisorError, match="never not ready") as info:
            await sup.wait_ready(timeout=1.0)
    assert "cannot bind" in str(info.value)


async def test_a_missing_executable_is_reported_and_retried() -> None:
    rec = Recorder()
    missing = ServiceSpec(name="ghost", argv=["/nonexistent/symbi-ghost"], env={})
    policy = RestartPolicy(initial_backoff=0.05, max_backoff=0.1)
    async with Supervisor([missing], policy=policy, on_event=rec.event) as sup:
        await until(lambda: len(rec.backoffs()) >= 2)
        assert sup.status("ghost").starts == 0
    assert any("cannot start" in msg and kind == "error" for _, msg, kind in rec.events)


async def test_a_stop_last_service_is_stopped_after_the_others_have_ended(tmp_path: Path) -> None:
    """The policy service stores the others' last decision-log batches: it gets SIGTERM once they are gone."""
    log = tmp_path / "order"
    slow_exit = (
        "import signal, sys, time\n"
        f"def bye(*_):\n    time.sleep(0.3); open({str(log)!r}, 'a').write('client gone\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    last = (
        "import signal, sys, time\n"
        f"def bye(*_):\n    open({str(log)!r}, 'a').write('policy told to stop\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    rec = Recorder()
    client = python(slow_exit, "lifecycle")
    policy = ServiceSpec(name="policy", argv=[sys.executable, "-c", last], env=dict(os.environ), stop_last=True)
    sup = Supervisor([policy, client], on_output=rec.output, grace_period=5)
    await sup.start()
    await until(lambda: ("lifecycle", "ready") in rec.lines and ("policy", "ready") in rec.lines)
    await sup.stop()
    assert log.read_text().splitlines() == ["client gone", "policy told to stop"]
    assert sup.status("policy").last_exit == 0
    assert sup.status("lifecycle").last_exit == 0
