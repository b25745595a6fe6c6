"""The output a run still holds when its output ends travels in its terminal event (``tail``), against real
Docker and NATS in each tier.

What is still held at the end depends on when the supervisor last flushed: it flushes when the workload goes
quiet for a moment and at least every ``FLUSH_INTERVAL_S``, and a loaded machine can make a short workload
pause long enough for that. These tests stretch both to well beyond a run, so what is held at the end is
exactly what was not sent as full chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionOutput
from symbi_sandbox_agent import supervisor

from .conftest import Agent, Result, Scheduler, running_agent

TIERS = ("tier1", "tier2")


@pytest.fixture(autouse=True)
def flushed_only_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "FLUSH_INTERVAL_S", 30.0)
    monkeypatch.setattr(supervisor, "SAMPLE_INTERVAL_S", 30.0)


async def run_both(agent: Agent, scheduler: Scheduler, script: str, **kw: Any) -> dict[str, Result]:
    ids = {tier: await scheduler.submit(agent.host_id, ["sh", "-c", script], tier=tier, **kw) for tier in TIERS}
    results = await asyncio.gather(*(scheduler.result(t) for t in ids.values()))
    return dict(zip(ids, results, strict=True))


async def test_a_short_result_comes_in_the_terminal_event_without_an_output_event(
    agent: Agent, scheduler: Scheduler
) -> None:
    script = 'cat; echo; echo "$GREETING"; echo to-log >&2'
    for tier, r in (await run_both(agent, scheduler, script, input=b"the input")).items():
        assert isinstance(r.terminal, ExecutionExited), (tier, r.terminal)
        assert r.of(ExecutionOutput) == [], tier
        tail = [(c.stream, c.offset, c.data) for c in r.terminal.tail]
        assert tail == [("stdout", 0, b"the input\nhi\n"), ("stderr", 0, b"to-log\n")], tier
        assert (r.stdout, r.stderr) == (b"the input\nhi\n", b"to-log\n")  # as every reader reassembles them
        digest = r.terminal.output
        assert digest.stdout_sha256 == hashlib.sha256(r.stdout).hexdigest()
        assert digest.stderr_sha256 == hashlib.sha256(r.stderr).hexdigest()


async def test_a_result_longer_than_a_chunk_streams_its_chunks_and_its_rest_comes_in_the_terminal_event(
    agent: Agent, scheduler: Scheduler
) -> None:
    script = "head -c 150000 /dev/zero | tr '\\0' a; echo end"
    for tier, r in (await run_both(agent, scheduler, script)).items():
        assert isinstance(r.terminal, ExecutionExited), (tier, r.terminal)
        assert [(e.offset, len(e.data)) for e in r.of(ExecutionOutput)] == [(0, 65536), (65536, 65536)], tier
        rest = b"a" * (150_000 - 2 * 65536) + b"end\n"
        assert [(c.stream, c.offset, c.data) for c in r.terminal.tail] == [("stdout", 2 * 65536, rest)], tier
        assert r.stdout == b"a" * 150_000 + b"end\n"  # r.stream checks the chunks follow each other
        assert r.terminal.output.stdout_bytes == len(r.stdout)
        assert r.terminal.output.stdout_sha256 == hashlib.sha256(r.stdout).hexdigest()


async def test_a_tail_that_would_not_fit_the_event_size_limit_goes_out_as_output_events(
    docker_client: Any, agent_settings: Any, scheduler: Scheduler
) -> None:
    """With a 100 000-byte event limit, 60 000 bytes held on each stream cannot ride in the terminal event."""
    async with running_agent(agent_settings(SYMBI_EVENTS__MAX_EVENT_BYTES="100000")) as agent:
        script = "head -c 60000 /dev/zero | tr '\\0' a; head -c 60000 /dev/zero | tr '\\0' b >&2"
        r = await scheduler.result(await scheduler.submit(agent.host_id, ["sh", "-c", script]))
    assert isinstance(r.terminal, ExecutionExited), r.terminal
    assert r.terminal.tail == ()
    assert sorted((e.stream, len(e.data)) for e in r.of(ExecutionOutput)) == [("stderr", 60_000), ("stdout", 60_000)]
    assert (r.stdout, r.stderr) == (b"a" * 60_000, b"b" * 60_000)
    assert r.terminal.output.stderr_sha256 == hashlib.sha256(r.stderr).hexdigest()
