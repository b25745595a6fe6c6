"""The pure parts: risk assessment, output chunking, sandbox spec and refusals, the execution aggregate."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import ConfigError
from symbi_common.settings_sandbox import SandboxSettings, resolve_host_id
from symbi_contracts.lifecycle.config import ResourceLimits, Workload
from symbi_contracts.sandbox_agent.errors import (
    ExecutionStateError,
    InvalidWorkload,
    LimitNotEnforceable,
    TierUnavailable,
)
from symbi_contracts.sandbox_agent.events import (
    EXECUTION_CODEC,
    ExecutionAction,
    ExecutionEgress,
    ExecutionExited,
    ExecutionFailed,
    ExecutionKilled,
    ExecutionOomKilled,
    ExecutionOutput,
    ExecutionPaused,
    ExecutionRefused,
    ExecutionResumed,
    ExecutionStarted,
    ExecutionTimedOut,
    Limits,
    OutputChunk,
    Usage,
    output_chunks,
)
from symbi_contracts.sandbox_agent.risk import RiskFactors, assess, factors_for_agent, parse_tier
from symbi_contracts.scheduler.events import TaskAssigned, TaskCompleted, TaskSubmitted
from symbi_sandbox_agent.cgroups import CgroupUsage
from symbi_sandbox_agent.config import check_settings
from symbi_sandbox_agent.domain import (
    ENVELOPE_ROOM,
    EXECUTION,
    RECENT_KEYS,
    ExitState,
    execution_data_key,
    fits,
    terminal_event,
)
from symbi_sandbox_agent.output import OutputCollector
from symbi_sandbox_agent.spec import GVISOR_MIN_PIDS, HostCapabilities, SandboxDefaults, apply_caps, build_spec
from symbi_sandbox_agent.tasks import fold_task

# --- risk ------------------------------------------------------------------------------------------


def test_low_risk_runs_in_tier1_and_high_risk_in_tier2() -> None:
    low = RiskFactors(
        data_sensitivity=0.0, code_trust=1.0, network_access=0.0, filesystem_access=0.0, external_integrations=0.0
    )
    high = RiskFactors(
        data_sensitivity=1.0, code_trust=0.0, network_access=1.0, filesystem_access=0.7, external_integrations=0.5
    )
    a, b = assess(low, default_tier="gvisor"), assess(high, default_tier="docker")
    assert (a.tier, a.score) == ("tier1", 0.0)
    assert b.tier == "tier2"
    assert b.score >= 0.5
    assert b.factors["network_access"] == 1.0
    assert "score" in b.reason


def test_threshold_is_inclusive_for_tier2() -> None:
    # data 0.5*0.3 + trust (1-0.5)*0.25 + net 0.5*0.2 + fs 0.5*0.1 + ext 0.5*0.15 = 0.5
    half = RiskFactors(
        data_sensitivity=0.5, code_trust=0.5, network_access=0.5, filesystem_access=0.5, external_integrations=0.5
    )
    assert assess(half).score == 0.5
    assert assess(half).tier == "tier2"


def test_unknown_factors_fall_back_to_the_default_tier() -> None:
    assert assess(RiskFactors(), default_tier="docker").tier == "tier1"
    assert assess(RiskFactors(), default_tier="gvisor").tier == "tier2"
    partial = RiskFactors(network_access=0.0, filesystem_access=0.0, external_integrations=0.0)
    chosen = assess(partial, default_tier="gvisor")
    assert chosen.tier == "tier2"
    assert set(chosen.unknown) == {"data_sensitivity", "code_trust"}
    assert assess(partial, default_tier="docker").tier == "tier1"


def test_a_forced_tier_wins_but_the_score_is_kept() -> None:
    high = RiskFactors(data_sensitivity=1.0, code_trust=0.0, network_access=1.0)
    forced = assess(high, forced="docker")
    assert forced.tier == "tier1"
    assert forced.score > 0.5
    assert "forces" in forced.reason


def test_factors_from_a_definition() -> None:
    f = factors_for_agent(
        network_access=["api.example.com"],
        filesystem_access=[("/data", "read")],
        external_apis=["https://a", "https://b"],
        data_sensitivity="confidential",
        code_trust="verified",
    )
    assert (f.network_access, f.filesystem_access, f.external_integrations) == (0.5, 0.3, 0.5)
    assert (f.data_sensitivity, f.code_trust) == (0.7, 1.0)
    assert factors_for_agent(network_access=["*"], filesystem_access=[("/", "write")]).network_access == 1.0
    with pytest.raises(InvalidWorkload, match="unknown data sensitivity"):
        factors_for_agent(data_sensitivity="top")
    with pytest.raises(InvalidWorkload, match="from 0 to 1"):
        assess(RiskFactors(network_access=2.0))
    with pytest.raises(InvalidWorkload, match="unknown sandbox tier"):
        parse_tier("tier3")


# --- output ----------------------------------------------------------------------------------------


def test_output_is_chunked_at_64k_and_digested() -> None:
    data = bytes(range(256)) * 1000  # 256_000 bytes
    out = OutputCollector(cap=10_000_000)
    chunks = out.feed("stdout", data[:100_000]) + out.feed("stdout", data[100_000:]) + out.flush()
    assert [len(c) for _, c in chunks] == [65536, 65536, 65536, 59392]
    assert b"".join(c for _, c in chunks) == data
    d = out.digest()
    assert d.stdout_bytes == len(data)
    assert d.stdout_sha256 == hashlib.sha256(data).hexdigest()
    assert not d.truncated


def test_output_past_the_cap_is_dropped_and_flagged() -> None:
    out = OutputCollector(cap=100)
    assert out.feed("stderr", b"x" * 60) == []
    out.feed("stdout", b"y" * 60)
    assert out.exceeded
    kept = out.flush()
    assert sum(len(c) for _, c in kept) == 100
    assert out.digest().truncated
    assert out.digest().stdout_bytes == 40


# --- spec ------------------------------------------------------------------------------------------

ALLOWED = DecisionRecord(action="task.allocate", effect="allow", policy_version=0)
CAPS = HostCapabilities(runtimes=frozenset({"runc", "runsc"}), blkio_device="/dev/vda")


def task(tier: str = "tier1", network: tuple[str, ...] = (), **lim: float) -> object:
    assigned = assigned_event(tier=tier, network_access=network, limits=ResourceLimits(**lim))  # type: ignore[arg-type]
    return fold_task("t1", [TaskSubmitted(agent_id="a1", input=b"in", priority="normal"), assigned])


def assigned_event(**fields: Any) -> TaskAssigned:
    base: dict[str, Any] = {
        "host_id": "h1",
        "tier": "tier1",
        "risk_score": 0.1,
        "risk_factors": {},
        "workload": Workload(image="img:1", command=("run",), env={"A": "1"}),
        "limits": ResourceLimits(),
        "attempt": 2,
        "decision": ALLOWED,
    }
    return TaskAssigned(**{**base, **fields})


def test_spec_hardens_every_sandbox() -> None:
    spec = build_spec(task("tier2", memory_mb=64), "h1", CAPS, SandboxDefaults(pids_limit=64))  # type: ignore[arg-type]
    hc = spec.host_config_kwargs("/x/input")
    assert spec.runtime == "runsc"
    assert hc["runtime"] == "runsc"
    assert hc["network_mode"] == "none"
    assert hc["read_only"] is True
    assert hc["cap_drop"] == ["ALL"]
    assert hc["security_opt"] == ["no-new-privileges"]
    assert hc["mem_limit"] == hc["memswap_limit"] == 64 * 1024 * 1024
    assert hc["pids_limit"] == GVISOR_MIN_PIDS  # raised for gVisor
    assert hc["device_write_bps"] == [{"Path": "/dev/vda", "Rate": 100 * 1024 * 1024}]
    assert "noexec" in hc["tmpfs"]["/tmp"]
    ck = spec.create_kwargs("/x/input")
    assert ck["user"] == "65534:65534"
    assert ck["network_disabled"] is True
    assert ck["stdin_open"] is True
    assert ck["labels"] == {"symbi.host_id": "h1", "symbi.task_id": "t1", "symbi.attempt": "2"}
    assert spec.name == "symbi-h1-t1-2"


def test_unenforceable_limits_are_refused() -> None:
    with pytest.raises(LimitNotEnforceable, match="only through the egress proxy socket"):
        build_spec(task(network=("api.example.com",)), "h1", CAPS, SandboxDefaults())  # type: ignore[arg-type]
    with_channel = SandboxDefaults(channel_root="/run/symbi/channels")
    with pytest.raises(InvalidWorkload, match="network_access: '\\*'"):
        build_spec(task(network=("*",)), "h1", CAPS, with_channel)  # type: ignore[arg-type]
    spec = build_spec(task(network=("api.example.com",), network_io_mbps=5), "h1", CAPS, with_channel)  # type: ignore[arg-type]
    ck = spec.create_kwargs("/x/input")
    assert ck["command"] == ["python3", "-m", "symbi_agent.forward", "--", "run"]
    assert ck["environment"]["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert ck["environment"]["SYMBI_EGRESS_SOCKET"] == "/symbi/run/egress.sock"
    assert spec.host_config_kwargs("/x/input")["network_mode"] == "none"
    assert spec.limits.network_io_mbps == 5
    # 0 MB/s is no network: no proxy, no forwarder.
    quiet = build_spec(task(network=("api.example.com",), network_io_mbps=0), "h1", CAPS, with_channel)  # type: ignore[arg-type]
    assert not quiet.network
    assert quiet.create_kwargs("/x/input")["command"] == ["run"]
    no_blkio = HostCapabilities(runtimes=frozenset({"runc"}), blkio_device=None)
    with pytest.raises(LimitNotEnforceable, match="disk IO"):
        build_spec(task(), "h1", no_blkio, SandboxDefaults())  # type: ignore[arg-type]
    with pytest.raises(TierUnavailable, match="runsc"):
        build_spec(task("tier2"), "h1", HostCapabilities(frozenset({"runc"}), "/dev/vda"), SandboxDefaults())  # type: ignore[arg-type]
    with pytest.raises(InvalidWorkload, match="memory_mb"):
        build_spec(task(memory_mb=4), "h1", CAPS, SandboxDefaults())  # type: ignore[arg-type]
    with pytest.raises(LimitNotEnforceable, match="disk_io_mbps"):
        build_spec(task(disk_io_mbps=0), "h1", CAPS, SandboxDefaults())  # type: ignore[arg-type]


def test_policy_caps_only_lower_the_limits() -> None:
    spec = build_spec(task(memory_mb=256, cpu_cores=2.0), "h1", CAPS, SandboxDefaults())  # type: ignore[arg-type]
    capped = apply_caps(spec, {"memory_mb": 64, "cpu_cores": 4, "execution_timeout_s": 10})
    assert (capped.limits.memory_mb, capped.limits.cpu_cores, capped.limits.execution_timeout_s) == (64, 2.0, 10.0)
    with pytest.raises(InvalidWorkload, match="too little"):
        apply_caps(spec, {"memory_mb": 1})
    # Limits that are not policy resources are the host's, not the policy's: a cap on them is not applied.
    assert apply_caps(spec, {"pids": 16, "output_cap_bytes": 1}).limits == spec.limits
    with pytest.raises(InvalidWorkload, match="cannot be honoured"):
        apply_caps(spec, {"memory_mb": "lots"})  # type: ignore[dict-item]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"sandbox\.user"):
        check_settings(SandboxSettings(user="0:0"))
    with pytest.raises(ConfigError, match="heartbeat_interval_s"):
        check_settings(SandboxSettings(heartbeat_interval_s=10))
    with pytest.raises(ConfigError, match="bus_messages_per_s"):
        check_settings(SandboxSettings(bus_messages_per_s=0))
    with pytest.raises(ConfigError, match=r"sandbox\.host_id"):
        resolve_host_id("bad.host")
    check_settings(SandboxSettings())
    assert resolve_host_id("ok-1") == "ok-1"


def test_task_view_ends_with_completion() -> None:
    events = [
        TaskSubmitted(agent_id="a", input=b"x", priority="normal"),
        assigned_event(host_id="h"),
        TaskCompleted(outcome="succeeded", attempt=2),
    ]
    view = fold_task("t", events)
    assert view.ended
    assert view.input == b"x"
    assert view.agent_id == "a"


# --- execution aggregate -------------------------------------------------------------------------

LIMITS = Limits(
    memory_mb=64,
    cpu_cores=1,
    disk_io_mbps=1,
    network_io_mbps=0,
    execution_timeout_s=1,
    pids=128,
    output_cap_bytes=10,
    scratch_mb=1,
)


def started(attempt: int) -> ExecutionStarted:
    return ExecutionStarted(
        attempt=attempt,
        host_id="h1",
        tier="tier1",
        runtime="runc",
        container="c",
        image="i",
        command=(),
        limits=LIMITS,
        hardening={},
        decision=DecisionRecord(action="sandbox.start", effect="allow", policy_version=0),
    )


def run(events: list[object]) -> object:
    state = EXECUTION.initial("t1")
    for e in events:
        for accepted in EXECUTION.decide(state, e):  # type: ignore[arg-type]
            state = EXECUTION.apply(state, accepted)
    return state


def test_a_redelivered_start_or_second_terminal_decides_nothing() -> None:
    state = run([started(1)])
    assert EXECUTION.decide(state, started(1)) == []  # type: ignore[arg-type]
    ended = run([started(1), ExecutionExited(attempt=1, exit_code=0)])
    assert EXECUTION.decide(ended, ExecutionExited(attempt=1, exit_code=1)) == []  # type: ignore[arg-type]
    assert EXECUTION.decide(ended, ExecutionRefused(attempt=1, reason="x")) == []  # type: ignore[arg-type]
    assert EXECUTION.decide(ended, started(2)) == [started(2)]  # type: ignore[arg-type]
    assert msgspec.structs.asdict(ended)["outcome"] == "exited"  # type: ignore[call-overload]


def test_an_execution_is_sealed_with_its_agents_key_once_an_event_names_the_agent() -> None:
    named = msgspec.structs.replace(started(1), agent_id="a1")
    assert execution_data_key(EXECUTION.initial("t1"), [named]) == "execution.by-agent.a1"
    state = run([named, ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"x")])
    assert execution_data_key(state, [ExecutionExited(attempt=1, exit_code=0)]) == "execution.by-agent.a1"  # type: ignore[arg-type]
    # A retry keeps the agent; a refusal names it as a start does.
    assert execution_data_key(run([named, started(2)]), []) == "execution.by-agent.a1"  # type: ignore[arg-type]
    refused = ExecutionRefused(attempt=1, agent_id="a2", reason="x")
    assert execution_data_key(EXECUTION.initial("t2"), [refused]) == "execution.by-agent.a2"
    # Written before events named the agent: the execution's own key (None), as its earlier events had.
    legacy = run([started(1)])
    assert execution_data_key(legacy, [ExecutionExited(attempt=1, exit_code=0)]) is None  # type: ignore[arg-type]


def test_an_output_chunk_is_stored_once_at_the_offset_its_writer_counted() -> None:
    state = run([started(1), ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"abc")])
    nxt = ExecutionOutput(attempt=1, stream="stdout", offset=3, data=b"de")
    assert EXECUTION.decide(state, nxt) == [nxt]  # type: ignore[arg-type]
    # The retry of a chunk that landed (its append's outcome unknown) decides to nothing.
    again = ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"abc")
    assert EXECUTION.decide(state, again) == []  # type: ignore[arg-type]
    # A chunk past the stream's end (one before it lost) or overlapping its end is refused: nothing is guessed.
    for offset, data in ((99, b"e"), (2, b"cde")):
        with pytest.raises(ExecutionStateError, match=f"of stdout at offset {offset}, but the stream holds 3 bytes"):
            EXECUTION.decide(state, ExecutionOutput(attempt=1, stream="stdout", offset=offset, data=data))  # type: ignore[arg-type]
    first_err = ExecutionOutput(attempt=1, stream="stderr", offset=0, data=b"e")
    assert EXECUTION.decide(state, first_err) == [first_err]  # type: ignore[arg-type]


def test_an_action_or_egress_event_is_stored_once_per_request_decision_or_connection() -> None:
    def action(seq: int, decision_id: str, outcome: str) -> ExecutionAction:
        record = DecisionRecord(action="memory.read", effect="allow", policy_version=1, decision_id=decision_id)
        return ExecutionAction(attempt=1, seq=seq, action="memory.read", decision=record, outcome=outcome)  # type: ignore[arg-type]

    denied = action(1, "d1", "denied")
    state = run([started(1), denied])
    assert EXECUTION.decide(state, denied) == []  # type: ignore[arg-type]
    # Re-evaluated: a new decision of the same request is stored; so is another request.
    for fresh in (action(1, "d2", "allowed"), action(2, "d3", "allowed")):
        assert EXECUTION.decide(state, fresh) == [fresh]  # type: ignore[arg-type]
    refused = ExecutionAction(attempt=1, seq=3, action="nope", outcome="failed", detail="unknown_action: x")
    state = run([started(1), denied, refused])
    assert EXECUTION.decide(state, refused) == []  # type: ignore[arg-type]
    # An egress record: once per connection (numbered in the run); one not numbered (older events) each time.
    conn = ExecutionEgress(attempt=1, host="example.com", port=443, outcome="allowed", conn=1)
    state = run([started(1), conn])
    assert EXECUTION.decide(state, conn) == []  # type: ignore[arg-type]
    for other in (msgspec.structs.replace(conn, conn=2), msgspec.structs.replace(conn, conn=0)):
        assert EXECUTION.decide(run([started(1), conn, msgspec.structs.replace(conn, conn=0)]), other) == [other]  # type: ignore[arg-type]
    # Only the last RECENT_KEYS are remembered.
    many = run([started(1), *(action(n, f"d{n}", "allowed") for n in range(1, RECENT_KEYS + 2))])
    assert len(many.recent) == RECENT_KEYS  # type: ignore[attr-defined]
    assert EXECUTION.decide(many, action(RECENT_KEYS + 1, f"d{RECENT_KEYS + 1}", "allowed")) == []  # type: ignore[arg-type]


def test_a_terminal_events_tail_continues_its_streams() -> None:
    state = run([started(1), ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"abc")])
    tail = (
        OutputChunk(stream="stdout", offset=0, data=b"de"),
        OutputChunk(stream="stderr", offset=0, data=b"oops\n"),
    )
    [ended] = EXECUTION.decide(state, ExecutionExited(attempt=1, exit_code=0, tail=tail))  # type: ignore[arg-type]
    assert [(c.stream, c.offset, c.data) for c in output_chunks(ended)] == [
        ("stdout", 3, b"de"),
        ("stderr", 0, b"oops\n"),
    ]
    after = EXECUTION.apply(state, ended)
    assert (after.status, after.stdout_offset, after.stderr_offset) == ("ended", 5, 5)


def test_a_terminal_event_of_the_previous_version_still_decodes() -> None:
    """Written before the tail existed: no ``tail`` field in its payload, so it carries no output."""
    digest = {"stdout_bytes": 3, "stdout_sha256": hashlib.sha256(b"abc").hexdigest(), "stderr_bytes": 0}
    old = {"type": "execution.exited", "attempt": 1, "exit_code": 0, "output": digest, "duration_s": 0.5, "reason": ""}
    event = EXECUTION_CODEC.decode(msgspec.msgpack.encode(old), event_type="execution.exited", schema_version=1)
    assert isinstance(event, ExecutionExited)
    assert (event.exit_code, event.output.stdout_bytes, event.tail) == (0, 3, ())
    assert output_chunks(event) == ()
    state = run([started(1), ExecutionOutput(attempt=1, stream="stdout", offset=0, data=b"abc"), event])
    assert (state.status, state.stdout_offset) == ("ended", 3)  # type: ignore[attr-defined]


def test_a_terminal_event_holds_its_tail_only_while_it_fits_the_event_size_limit() -> None:
    tail = (OutputChunk(stream="stdout", offset=0, data=b"x" * 64 * 1024),) * 2
    ended = ExecutionExited(attempt=1, exit_code=0, reason="r" * 500, tail=tail)
    size = len(EXECUTION_CODEC.encode(ended))
    assert fits(ended, 1024 * 1024 - 4096)
    assert fits(ended, size + ENVELOPE_ROOM)
    assert not fits(ended, size + ENVELOPE_ROOM - 1)
    assert not fits(ended, 100_000)


def test_pause_and_resume_follow_the_state() -> None:
    state = run([started(1), ExecutionPaused(attempt=1)])
    with pytest.raises(ExecutionStateError):
        EXECUTION.decide(state, ExecutionPaused(attempt=1))  # type: ignore[arg-type]
    assert EXECUTION.decide(state, ExecutionResumed(attempt=1)) == [ExecutionResumed(attempt=1)]  # type: ignore[arg-type]
    with pytest.raises(ExecutionStateError):
        EXECUTION.decide(run([]), ExecutionPaused(attempt=1))  # type: ignore[arg-type]


def test_how_a_run_ended_decides_its_terminal_event() -> None:
    spec = build_spec(task(memory_mb=64, execution_timeout_s=5), "h1", CAPS, SandboxDefaults(output_cap_bytes=10))  # type: ignore[arg-type]
    digest, usage = OutputCollector(10).digest(), Usage(cpu_seconds=0.5)

    def end(exit_state: ExitState | None, kill_reason: str = "") -> object:
        return terminal_event(spec, exit_state, kill_reason, digest, usage, 1.5)

    exited = end(ExitState(3, False, ""))
    assert isinstance(exited, ExecutionExited)
    assert (exited.exit_code, exited.usage, exited.duration_s) == (3, usage, 1.5)
    assert exited.reason == "exited with status 3"
    assert end(ExitState(0, False, "")).reason == ""  # type: ignore[attr-defined]
    # A failed exit names the last line the workload logged (a DSL body's file:line:column: message).
    logged = OutputCollector(10_000)
    logged.feed("stderr", b"starting\nagent.symbi:4:13: cannot apply + to a number and a string\n")
    logged.feed("stderr", b'@symbi {"v": 1}\n')
    failed_exit = terminal_event(spec, ExitState(1, False, ""), "", digest, usage, 1.5, logged.last_error_line())
    assert failed_exit.reason == "exited with status 1: agent.symbi:4:13: cannot apply + to a number and a string"
    long = OutputCollector(100_000)
    long.feed("stderr", b"x" * 10_000)
    assert long.last_error_line() == "x" * 499 + "…"
    coloured = OutputCollector(100)
    coloured.feed("stderr", b"\x1b[31mred\n\n")
    assert coloured.last_error_line() == "?[31mred"
    # A timeout wins over the exit state; an OOM kill over a kill by the daemon.
    timed_out = end(ExitState(137, True, ""), "timeout")
    assert isinstance(timed_out, ExecutionTimedOut)
    assert timed_out.timeout_s == 5
    oom = end(ExitState(137, True, ""), "output_cap")
    assert isinstance(oom, ExecutionOomKilled)
    assert oom.memory_limit_bytes == 64 * 1024 * 1024
    killed = end(ExitState(137, False, ""), "output_cap")
    assert isinstance(killed, ExecutionKilled)
    assert killed.reason == "output_cap: printed more than 10 bytes"
    assert end(None, "shutdown").reason == "shutdown: the sandbox-agent shut down"  # type: ignore[attr-defined]
    failed = end(ExitState(None, False, "the container disappeared"))
    assert isinstance(failed, ExecutionFailed)
    assert failed.reason == "no exit status: the container disappeared"
    assert EXECUTION.decide(run([started(spec.attempt)]), exited) == [exited]  # type: ignore[arg-type]


def test_remove_cgroup_tree_removes_empty_cgroups_deepest_first_in_every_hierarchy(tmp_path: Path) -> None:
    from symbi_sandbox_agent.cgroups import remove_cgroup_tree

    for hierarchy in ("cpu", "memory"):
        (tmp_path / hierarchy / "symbi" / "h1" / "t1" / "docker" / "c1").mkdir(parents=True)
    (tmp_path / "memory" / "symbi" / "h1" / "t2" / "busy").mkdir(parents=True)
    (tmp_path / "memory" / "symbi" / "h1" / "t2" / "busy" / "tasks").write_text("1\n")  # not empty: stays
    remove_cgroup_tree("/symbi/h1/t1", tmp_path)
    assert not (tmp_path / "cpu" / "symbi" / "h1" / "t1").exists()
    assert not (tmp_path / "memory" / "symbi" / "h1" / "t1").exists()
    remove_cgroup_tree("/symbi/h1", tmp_path)
    assert (tmp_path / "memory" / "symbi" / "h1" / "t2" / "busy" / "tasks").exists()
    assert not (tmp_path / "cpu" / "symbi" / "h1").exists()


def test_an_oom_kill_is_read_from_the_parent_cgroups_memory_events(tmp_path: Path) -> None:
    """cgroup v2 (``memory.events``, hierarchical) and v1 (``memory.oom_control``); no file: no OOM kill known."""
    v2 = tmp_path / "v2"
    (v2 / "symbi" / "t1").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("memory cpu io\n")
    events = v2 / "symbi" / "t1" / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    usage = CgroupUsage("symbi/t1", v2)
    assert not usage.oom_killed()
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert usage.oom_killed()
    v1 = tmp_path / "v1"
    (v1 / "memory" / "symbi" / "t2").mkdir(parents=True)
    (v1 / "memory" / "symbi" / "t2" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert CgroupUsage("symbi/t2", v1).oom_killed()
    assert not CgroupUsage("symbi/none", v1).oom_killed()
