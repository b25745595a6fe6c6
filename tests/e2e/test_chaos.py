"""kill -9 of a service while 20 tasks run: the runtime heals and every task ends in a defined state.

One real ``symbi up`` runtime (six services, nats-server, PostgreSQL, Docker) runs 20 short tasks on
four agents (an agent runs one task at a time, so several run side by side). While tasks are in
flight, one service process is killed with SIGKILL. Then:

- the supervisor restarts it: a new pid, ``/readyz`` green again;
- every task reaches a terminal state within a bound (completed with an outcome, or cancelled), and
  its stored events (verified and decrypted here) agree with the scheduler's view: one submission,
  one end, attempts in order, at most one start and one end per attempt, the result intact;
- every agent is Ready again;
- the audit service has verified the whole log up to its end and reports no finding;
- no container of this runtime's sandbox host is left behind.

The service to kill comes from a seeded ``random.Random``: the seed is printed and part of the test
id, so a failure is reproduced with ``SYMBI_CHAOS_SEED=<seed>``. The default suite kills one service;
``SYMBI_CHAOS_SERVICES=all`` (or a comma-separated list) kills each named service in its own run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from symbi_cli.credentials import auth_headers
from symbi_cli.events import operator_url
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import ALL_SERVICES, RuntimeOptions, sandbox_host_id
from symbi_cli.supervisor import RestartPolicy
from symbi_common.datakeys import DataKeys, open_service_datakeys
from symbi_common.events import Event, EventCodec, event_type
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.sealing import decrypt, open_envelope
from symbi_common.streams import EVENTS_STREAM, read_subject
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    TERMINAL_TYPES,
    ExecutionExited,
    ExecutionFailed,
    ExecutionOutput,
    ExecutionStarted,
    OutputChunk,
    OutputDigest,
    output_chunks,
)
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC
from symbi_contracts.scheduler.events import TaskAssigned, TaskCancelled, TaskCompleted, TaskSubmitted
from symbi_sandbox_agent.spec import LABEL_HOST

AGENTS = 4
TASKS = 20
#: Each task sleeps this long, so tasks are still in flight when the service dies.
WORK_S = 1.5
#: How long the tasks may take to end after the kill (a restarted scheduler first waits out the old lease).
SETTLE_S = 120.0


def worker(tier: str) -> str:
    """An agent that waits a moment, then echoes its input: in flight long enough to be interrupted."""
    return f"""\
agent chaos_worker(text: String) -> String {{
  version = "1.0.0"
  description = "Waits, then echoes its input"
  capabilities = [text.generate]
  workload = {{image: "symbi/busybox:1", command: ["sh", "-c", "sleep {WORK_S}; cat $SYMBI_INPUT"]}}

  with sandbox = {tier}, timeout = 30s, memory = 64MB, cpu = 0.25, network_io = 0 {{ }}
}}
"""


def _seed() -> int:
    given = os.environ.get("SYMBI_CHAOS_SEED", "")
    if given:
        return int(given)
    # Under pytest-xdist every worker collects the tests and they must agree on the ids (the seed is in them):
    # the seed comes from the run's id, new for every run and the same in each of its workers.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    if run:
        return int(hashlib.sha256(run.encode()).hexdigest(), 16) % 1_000_000
    return random.SystemRandom().randrange(1_000_000)


def _victims(seed: int) -> list[str]:
    """The services to kill, one run each: ``SYMBI_CHAOS_SERVICES`` or one drawn with ``seed``."""
    wanted = os.environ.get("SYMBI_CHAOS_SERVICES", "").strip()
    if wanted == "all":
        return list(ALL_SERVICES)
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = set(names) - set(ALL_SERVICES)
        assert not unknown, f"SYMBI_CHAOS_SERVICES names unknown services {unknown}; known: {ALL_SERVICES}"
        return names
    return [random.Random(seed).choice(ALL_SERVICES)]


SEED = _seed()
VICTIMS = _victims(SEED)

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True, slots=True)
class Recorded:
    event: Event
    event_type: str


class EventReader:
    """The stored events of an aggregate, verified against the key registry and decrypted."""

    def __init__(self, nc: Any, keys_dir: Path) -> None:
        self.nc = nc
        self.registry = KeyRegistry.load(keys_dir)
        self.keys_dir = keys_dir
        self.datakeys: DataKeys | None = None

    async def read(self, subject: str, codec: EventCodec[Any]) -> list[Recorded]:
        if self.datakeys is None:
            self.datakeys = await open_service_datakeys(
                self.nc.jetstream(), self.keys_dir / "audit", "audit", self.registry
            )
        found = []
        async for batch in read_subject(self.nc, EVENTS_STREAM, subject):
            for raw in batch:
                opened = open_envelope(raw.data, subject=raw.subject, sequence=raw.sequence, registry=self.registry)
                plaintext = decrypt(opened, await self.datakeys.by_id(opened.header.data_key_id))
                event = codec.decode(plaintext, event_type=opened.header.event_type)
                found.append(Recorded(event, opened.header.event_type))
        return found


#: The container runtime each sandbox tier must run in.
RUNTIMES = {"tier1": "runc", "tier2": "runsc"}


def task_problems(
    view: dict[str, Any], task: list[Recorded], execution: list[Recorded], text: str, tier: str
) -> list[str]:
    """Where a finished task's stored events disagree with its view, its tier or themselves (empty: nowhere)."""
    problems: list[str] = []
    types = [r.event_type for r in task]
    if not task or not isinstance(task[0].event, TaskSubmitted):
        problems.append(f"does not start with task.submitted: {types}")
    ends = [r for r in task if isinstance(r.event, TaskCompleted | TaskCancelled)]
    if len(ends) != 1 or ends[0] is not task[-1]:
        return [*problems, f"not exactly one end, last: {types}"]
    if Counter(types)["task.submitted"] != 1:
        problems.append(f"submitted more than once: {types}")
    attempts = [r.event.attempt for r in task if isinstance(r.event, TaskAssigned)]
    if attempts != list(range(1, len(attempts) + 1)):
        problems.append(f"attempts out of order: {attempts}")
    end = ends[0].event
    if isinstance(end, TaskCancelled):
        if view["status"] != "cancelled":
            problems.append(f"cancelled in its events, {view['status']} in the scheduler's view")
        return problems
    assert isinstance(end, TaskCompleted)
    if (view["status"], view["outcome"], view["attempt"]) != ("completed", end.outcome, end.attempt):
        problems.append(
            f"view {view['status']}/{view['outcome']}/{view['attempt']}, events {end.outcome}/{end.attempt}"
        )
    sandboxes = {(r.event.tier, r.event.runtime) for r in execution if isinstance(r.event, ExecutionStarted)}
    if sandboxes - {(tier, RUNTIMES[tier])}:
        problems.append(f"ran in {sorted(sandboxes)}, not {tier} ({RUNTIMES[tier]})")
    starts = Counter(r.event.attempt for r in execution if isinstance(r.event, ExecutionStarted))
    terminals = Counter(r.event.attempt for r in execution if isinstance(r.event, TERMINAL_TYPES))
    twice = sorted(a for a in starts | terminals if starts[a] > 1 or terminals[a] > 1)
    if twice:
        problems.append(f"an attempt started or ended twice: {twice}")
    final = [r.event for r in execution if isinstance(r.event, TERMINAL_TYPES) and r.event.attempt == end.attempt]
    if end.outcome == "succeeded":
        if not final or not isinstance(final[0], ExecutionExited) or final[0].exit_code != 0:
            problems.append(f"succeeded without a clean exit of attempt {end.attempt}: {final}")
        stdout = b"".join(
            c.data
            for r in execution
            if getattr(r.event, "attempt", None) == end.attempt
            for c in output_chunks(r.event)
            if c.stream == "stdout"
        )
        if stdout != text.encode():
            problems.append(f"result {stdout!r}, expected {text!r}")
        elif final and final[0].output.stdout_sha256 != hashlib.sha256(stdout).hexdigest():
            problems.append("the result does not match the SHA-256 of its terminal event")
    elif end.attempt in starts and not final:
        problems.append(f"{end.outcome} while attempt {end.attempt} has no terminal execution event")
    return problems


async def _poll(what: str, check: Any, timeout: float, interval: float = 0.25) -> Any:
    """``await check()`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = await check()
            if last:
                return last
        await asyncio.sleep(interval)
    pytest.fail(f"{what} within {timeout:g} s (last: {last!r}) [seed {SEED}]")


def containers_of(host_id: str) -> list[str]:
    """Every container (running or not) labelled with ``host_id``."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL_HOST}={host_id}", "--format", "{{.Names}} {{.Status}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.splitlines()


async def offline_audit(symbi_exe: str, env: dict[str, str], home: Path, at_least: int) -> dict[str, Any]:
    """``symbi audit export`` then ``symbi audit verify --json`` as real processes: the offline verifier's report.

    The export holds exactly the events its checkpoint covers: it is taken again until a published checkpoint
    covers ``at_least`` events."""
    log = home / "audit-log.jsonl"
    checkpoint = log.with_suffix(".checkpoint")
    export = ["audit", "export", "--home", str(home), "--out", str(log), "--checkpoint-out", str(checkpoint)]
    verify = ["audit", "verify", str(log), "--checkpoint", str(checkpoint), "--home", str(home), "--json"]

    async def symbi(argv: list[str]) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            symbi_exe, *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode in (0, 1), f"symbi {' '.join(argv[:2])}: {err.decode()}"
        return out

    for _ in range(40):
        await symbi(export)
        if checkpoint.exists() and int(checkpoint.read_text().split("\n")[1]) >= at_least:
            break
        await asyncio.sleep(0.5)
    out = await symbi(verify)
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.mark.parametrize("victim", VICTIMS, ids=[f"{v}-seed{SEED}" for v in VICTIMS])
async def test_kill_9_of_a_service_during_20_tasks(
    victim: str, runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str
) -> None:
    rng = random.Random(f"{SEED}:{victim}")
    #: The kill comes this long after this many tasks have started (drawn, so runs differ in when it lands:
    #: while containers start, print, exit, or while the scheduler completes tasks and assigns the next).
    in_flight, delay = rng.randint(1, AGENTS), round(rng.uniform(0, 2 * WORK_S), 2)
    print(f"chaos: seed {SEED}: kill -9 {victim} {delay} s after {in_flight} task(s) run")

    options = dataclasses.replace(runtime_options, restart=RestartPolicy(initial_backoff=0.1, max_backoff=1.0))
    env = dict(options.env or {})
    #: The sandbox host `symbi up` gives this home (checked below to be where every task ran).
    host_id = sandbox_host_id(runtime_home, env)
    assert host_id is not None
    rt = LocalRuntime(options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=90)
        assert rt.supervisor is not None
        supervisor = rt.supervisor
        async with httpx.AsyncClient(timeout=10, headers=auth_headers(rt.home)) as http:
            # Half the agents run in runc (Tier 1), half in gVisor (Tier 2): both kinds of sandbox get interrupted.
            tiers = {f"chaos-{i}": ("tier1", "tier2")[i % 2] for i in range(AGENTS)}
            agents = list(tiers)
            for agent_id, tier in tiers.items():
                body = {
                    "definition": worker(tier),
                    "file": "chaos-worker.symbi",
                    "agent_id": agent_id,
                }
                r = await http.post(f"{rt.url_of('lifecycle')}/v1/agents", json=body)
                assert r.status_code < 300, r.text
                assert r.json()["state"] == "Ready", r.text

            inputs: dict[str, str] = {}
            agent_of: dict[str, str] = {}
            for i in range(TASKS):
                text = f"task {i}\n"
                body = {"agent_id": agents[i % AGENTS], "input": text, "priority": "normal"}
                r = await http.post(f"{rt.url_of('scheduler')}/v1/tasks", json=body)
                assert r.status_code < 300, r.text
                inputs[r.json()["task_id"]] = text
                agent_of[r.json()["task_id"]] = agents[i % AGENTS]

            async def views() -> dict[str, dict[str, Any]]:
                out = {}
                for task_id in inputs:
                    r = await http.get(f"{rt.url_of('scheduler')}/v1/tasks/{task_id}")
                    r.raise_for_status()
                    out[task_id] = r.json()
                return out

            async def running() -> list[str] | None:
                ids = [t for t, v in (await views()).items() if v["running"]]
                return ids if len(ids) >= in_flight else None

            started = await _poll(f"{in_flight} task(s) running", running, timeout=60)
            await asyncio.sleep(delay)

            old_pid = supervisor.pids()[victim]
            starts = supervisor.status(victim).starts
            print(f"chaos: kill -9 {victim} pid {old_pid} ({len(started)} task(s) were running {delay} s ago)")
            os.kill(old_pid, signal.SIGKILL)

            async def restarted() -> bool:
                status = supervisor.status(victim)
                return status.starts > starts and status.pid not in (None, old_pid)

            await _poll(f"{victim} restarted by the supervisor", restarted, timeout=30)
            await supervisor.wait_ready(victim, timeout=60)
            assert (await http.get(f"{rt.url_of(victim)}/readyz")).status_code == 200
            assert supervisor.status(victim).pid != old_pid

            async def all_finished() -> dict[str, dict[str, Any]] | None:
                current = await views()
                done = all(v["status"] in ("completed", "cancelled") for v in current.values())
                return current if done else None

            final = await _poll(f"all {TASKS} tasks ending", all_finished, timeout=SETTLE_S, interval=0.5)

            nc = await nats.connect(
                **server_options(operator_url(runtime_home)), connect_timeout=5, allow_reconnect=False
            )
            try:
                reader = EventReader(nc, rt.keys_dir)
                problems: dict[str, list[str]] = {}
                outcomes: Counter[str] = Counter()
                for task_id, view in final.items():
                    task = await reader.read(f"evt.task.{task_id}", TASK_CODEC)
                    execution = await reader.read(f"evt.execution.{task_id}", EXECUTION_CODEC)
                    found = task_problems(view, task, execution, inputs[task_id], tiers[agent_of[task_id]])
                    if view["host_id"] != host_id:
                        found.append(f"ran on host {view['host_id']!r}, not this runtime's {host_id!r}")
                    outcomes[view["outcome"] or view["status"]] += 1
                    if view["outcome"] != "succeeded":
                        # Only the death of the sandbox-agent itself may cost a task its result, and
                        # then its restart must have said so: the attempt failed, its container removed.
                        mine = [r.event for r in execution if getattr(r.event, "attempt", None) == view["attempt"]]
                        failed = [e for e in mine if isinstance(e, ExecutionFailed)]
                        if victim != "sandbox-agent" or view["outcome"] != "failed" or not failed:
                            found.append(f"{view['status']}/{view['outcome']} ({view['detail']}) after {victim} died")
                    if found:
                        problems[task_id] = found
                print(f"chaos: outcomes {dict(outcomes)}")
                assert not problems, f"seed {SEED}, {victim} killed: {problems}"
                last_sequence = (await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
            finally:
                await nc.drain()

            async def agents_ready() -> bool:
                states = [(await http.get(f"{rt.url_of('lifecycle')}/v1/agents/{a}")).json()["state"] for a in agents]
                return all(s == "Ready" for s in states)

            await _poll("every agent Ready again", agents_ready, timeout=30)

            async def audited() -> dict[str, Any] | None:
                status = (await http.get(f"{rt.url_of('audit')}/v1/audit/status")).json()
                return status if status["sequence"] >= last_sequence else None

            status = await _poll(f"the audit service verifying up to event {last_sequence}", audited, timeout=60)
            findings = (await http.get(f"{rt.url_of('audit')}/v1/audit/findings")).json()["items"]
            assert findings == [], f"seed {SEED}, {victim} killed: {findings}"
            assert status["findings"] == 0, status
            # And offline, trusting nothing but the keyring: the exported log against the signed checkpoint.
            report = await offline_audit(symbi_exe, env, runtime_home, last_sequence)
            assert report["ok"] is True, f"seed {SEED}, {victim} killed: {report['findings']}"
            assert report["events"] >= last_sequence
            assert report["checkpoint"] is not None

        # What an operator sees: everything healthy again, and which service was restarted after what.
        proc = await asyncio.create_subprocess_exec(
            symbi_exe, "status", "--home", str(runtime_home), "--json", env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        health = json.loads(out)
        assert health["status"] == "ok", health["problems"]
        restarts = {c["name"]: (c["restarts"], c["last_exit"]) for c in health["components"] if c["kind"] == "service"}
        assert restarts == {s: (1, "signal SIGKILL") if s == victim else (0, None) for s in ALL_SERVICES}

        async def no_containers() -> bool:
            return not containers_of(host_id)

        await _poll(f"no container of host {host_id} left", no_containers, timeout=20)
    finally:
        await rt.stop()
    assert containers_of(host_id) == [], "a container outlived the runtime"


def test_the_history_check_finds_what_it_looks_for() -> None:
    """The consistency check above is not vacuous: each kind of broken history is reported."""

    def rec(event: Event) -> Recorded:
        return Recorded(event, event_type(event))

    submitted = rec(TaskSubmitted(agent_id="a", input=b"x\n", priority="normal"))
    completed = rec(TaskCompleted(outcome="succeeded", attempt=1))
    output = rec(ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"x\n"))
    digest = OutputDigest(stdout_bytes=2, stdout_sha256=hashlib.sha256(b"x\n").hexdigest())
    exited = rec(ExecutionExited(attempt=1, exit_code=0, output=digest))
    view = {"status": "completed", "outcome": "succeeded", "attempt": 1}

    assert task_problems(view, [submitted, completed], [output, exited], "x\n", "tier1") == []
    assert task_problems(view, [submitted], [output, exited], "x\n", "tier1")  # no end
    assert task_problems(view, [submitted, completed, completed], [output, exited], "x\n", "tier1")  # two ends
    assert task_problems(view, [submitted, submitted, completed], [output, exited], "x\n", "tier1")
    assert task_problems(view, [submitted, completed], [output, exited, exited], "x\n", "tier1")  # ended twice
    assert task_problems(view, [submitted, completed], [exited], "x\n", "tier1")  # result lost
    tail = (OutputChunk(stream="stdout", offset=0, data=b"x\n"),)
    in_tail = rec(ExecutionExited(attempt=1, exit_code=0, output=digest, tail=tail))
    assert task_problems(view, [submitted, completed], [in_tail], "x\n", "tier1") == []  # the result in the tail
    assert task_problems(view, [submitted, completed], [output, in_tail], "x\n", "tier1")  # result twice
    assert task_problems(view, [submitted, completed], [output, output, exited], "x\n", "tier1")  # result twice
    assert task_problems(view | {"outcome": "failed"}, [submitted, completed], [output, exited], "x\n", "tier1")
    failed = rec(ExecutionExited(attempt=1, exit_code=1, output=digest))
    assert task_problems(view, [submitted, completed], [output, failed], "x\n", "tier1")
