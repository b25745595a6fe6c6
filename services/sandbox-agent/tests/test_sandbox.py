"""Tasks run in both tiers against real Docker (runc and runsc); escapes and abuse are contained and reported."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from symbi_contracts.sandbox_agent.events import (
    ExecutionExited,
    ExecutionKilled,
    ExecutionOomKilled,
    ExecutionStarted,
    ExecutionTimedOut,
)

from .conftest import Agent, Scheduler, containers_of, limits

TIERS = ("tier1", "tier2")
MIB = 1024 * 1024


async def run_both(agent: Agent, scheduler: Scheduler, command: str, **kw: Any) -> dict[str, Any]:
    """The same shell command in each tier, concurrently; their results by tier."""
    ids = {tier: await scheduler.submit(agent.host_id, ["sh", "-c", command], tier=tier, **kw) for tier in TIERS}
    results = await asyncio.gather(*(scheduler.result(t) for t in ids.values()))
    return dict(zip(ids, results, strict=True))


async def test_a_task_returns_its_stdout_as_result_in_each_tier(agent: Agent, scheduler: Scheduler) -> None:
    script = 'cat; echo; cat "$SYMBI_INPUT"; echo; echo "$GREETING $(id -u) $SYMBI_TASK_ID"; echo to-log >&2'
    results = await run_both(agent, scheduler, script, input=b"the input")
    for tier, r in results.items():
        task_id = r.task_id
        assert isinstance(r.terminal, ExecutionExited), (tier, r.terminal)
        assert r.terminal.exit_code == 0
        assert r.stdout == f"the input\nthe input\nhi 65534 {task_id}\n".encode()
        assert r.stderr == b"to-log\n"
        [started] = r.of(ExecutionStarted)
        assert started.tier == tier
        assert started.runtime == {"tier1": "runc", "tier2": "runsc"}[tier]
        assert started.decision.action == "sandbox.start"
        assert started.decision.effect == "allow"
        assert started.decision.policies == ("enforcement-disabled",)
        assert started.hardening["network"] == "none"
        assert started.hardening["root_filesystem"] == "read-only"
        assert r.terminal.output.stdout_sha256 == hashlib.sha256(r.stdout).hexdigest()
        assert r.terminal.usage.peak_memory_bytes > 0


async def test_a_megabyte_written_at_once_comes_through_intact_in_each_tier(agent: Agent, scheduler: Scheduler) -> None:
    # One write(2) of 1 MiB (dd bs=1M) after stdin was consumed: under gVisor this stalls if stdin stays open.
    script = "cat > /dev/null; head -c 1048576 /dev/urandom > /tmp/r; dd if=/tmp/r bs=1048576 count=1 2>/dev/null"
    results = await run_both(agent, scheduler, script, input=b"x" * 200_000)
    for tier, r in results.items():
        assert isinstance(r.terminal, ExecutionExited), (tier, r.terminal)
        assert r.terminal.exit_code == 0
        assert len(r.stdout) == MIB
        assert r.terminal.output.stdout_bytes == MIB
        assert hashlib.sha256(r.stdout).hexdigest() == r.terminal.output.stdout_sha256
        assert len(r.events) >= 16 + 2  # started, 16 chunks of 64 KiB, exited
        assert r.terminal.usage.cpu_seconds > 0


async def test_no_network_without_permission(agent: Agent, scheduler: Scheduler) -> None:
    script = "if wget -T 3 -q -O /dev/null http://1.1.1.1/; then echo REACHED; exit 0; fi; echo BLOCKED; exit 3"
    for tier, r in (await run_both(agent, scheduler, script)).items():
        assert isinstance(r.terminal, ExecutionExited), (tier, r.terminal)
        assert (r.terminal.exit_code, r.stdout) == (3, b"BLOCKED\n"), (tier, r.stdout, r.stderr)


async def test_the_root_filesystem_is_read_only(agent: Agent, scheduler: Scheduler) -> None:
    script = "echo x > /etc/evil && echo WROTE; mkdir /evil && echo WROTE; echo scratch > /tmp/ok; cat /tmp/ok"
    for tier, r in (await run_both(agent, scheduler, script)).items():
        assert isinstance(r.terminal, ExecutionExited), (tier, r.terminal)
        assert r.stdout == b"scratch\n", (tier, r.stdout)
        assert b"Read-only file system" in r.stderr, (tier, r.stderr)


async def test_a_fork_bomb_hits_the_pids_limit(agent: Agent, scheduler: Scheduler, docker_client: Any) -> None:
    script = "b() { b | b & }; b; sleep 2; echo survived"
    lim = limits(cpu_cores=0.5, execution_timeout_s=8)
    results = await run_both(agent, scheduler, script, lim=lim)
    for tier, r in results.items():
        assert isinstance(r.terminal, ExecutionExited | ExecutionTimedOut), (tier, r.terminal)
    # runc: the shell's forks fail at the limit. gVisor: the sandbox itself cannot get more threads and
    # ends with an error status; either way the bomb stays inside its pids cgroup.
    assert b"can't fork" in results["tier1"].stderr, results["tier1"].stderr[:300]
    tier2 = results["tier2"]
    assert b"can't fork" in tier2.stderr or (tier2.terminal.exit_code or 0) != 0, tier2.terminal
    # The host is fine afterwards: the next task runs normally.
    after = await run_both(agent, scheduler, "echo ok")
    assert all(r.stdout == b"ok\n" for r in after.values())
    assert containers_of(docker_client, agent.host_id) == []


async def test_allocating_past_the_memory_limit_is_an_oom_event(agent: Agent, scheduler: Scheduler) -> None:
    for tier, r in (await run_both(agent, scheduler, "tail /dev/zero", lim=limits(memory_mb=48))).items():
        assert isinstance(r.terminal, ExecutionOomKilled), (tier, r.terminal)
        assert r.terminal.exit_code == 137
        assert r.terminal.memory_limit_bytes == 48 * MIB
        assert r.terminal.usage.peak_memory_bytes > 20 * MIB, (tier, r.terminal.usage)


async def test_running_past_the_timeout_is_killed(agent: Agent, scheduler: Scheduler) -> None:
    lim = limits(execution_timeout_s=1.5)
    # Half a megabyte of input it never reads (far past a pipe buffer) must not hold up the timeout either.
    script = "echo begun; sleep 60; echo never"
    for tier, r in (await run_both(agent, scheduler, script, lim=lim, input=b"i" * (MIB // 2))).items():
        assert isinstance(r.terminal, ExecutionTimedOut), (tier, r.terminal)
        assert r.terminal.timeout_s == 1.5
        assert 1.5 <= r.terminal.duration_s < 15
        assert r.stdout == b"begun\n"


@pytest.mark.parametrize("tier", TIERS)
async def test_printing_past_the_output_cap_is_killed(agent: Agent, scheduler: Scheduler, tier: str) -> None:
    task_id = await scheduler.submit(agent.host_id, ["yes", "spam"], tier=tier)
    r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionKilled), r.terminal
    assert r.terminal.reason.startswith("output_cap")
    cap = agent.daemon.settings.output_cap_bytes
    assert len(r.stdout) == cap
    assert r.terminal.output.truncated
    assert r.stdout[:10] == b"spam\nspam\n"


def test_docker_calls_about_different_containers_share_one_connection_pool(docker_client: Any) -> None:
    """docker-py keys its unix-socket pools by URL (which names the container): without the fix every
    container got a fresh connection; a removed container that is gone already is fine."""
    from symbi_sandbox_agent.docker_host import DockerHost

    host = DockerHost()
    try:
        for i in range(5):
            assert host.state(f"symbi-test-absent-{i}") == {}
            host.remove(f"symbi-test-absent-{i}")
        pools = host.api._custom_adapter.pools
        assert len(pools) <= 2, list(pools.keys())  # the constructor's ping, then the shared one
    finally:
        host.close()


def test_a_present_image_is_taken_as_present_for_a_while_and_an_absent_one_is_asked_again(
    docker_client: Any,
) -> None:
    from symbi_sandbox_agent.docker_host import DockerHost

    host = DockerHost()
    try:
        calls: list[str] = []
        inspect = host.api.inspect_image

        def counting(image: str) -> Any:
            calls.append(image)
            return inspect(image)

        host.api.inspect_image = counting
        assert host.image_present("symbi/busybox:1")
        assert host.image_present("symbi/busybox:1")
        assert not host.image_present("symbi/absent:0")
        assert not host.image_present("symbi/absent:0")
        assert calls == ["symbi/busybox:1", "symbi/absent:0", "symbi/absent:0"]
    finally:
        host.close()
