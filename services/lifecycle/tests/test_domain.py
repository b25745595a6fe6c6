"""The agent state machine and config validation, as pure functions (Hypothesis)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import AlreadyExists, IllegalTransition, NotFound, SymbiError, ValidationError
from symbi_contracts.lifecycle.config import AgentConfig, PolicySpec, ResourceLimits
from symbi_contracts.lifecycle.events import (
    CODEC,
    AgentConfigured,
    AgentConfigureDenied,
    AgentDenied,
    AgentFailed,
    AgentReady,
    AgentRegistered,
    AgentStatus,
)
from symbi_lifecycle.config import convert_config, validate_config
from symbi_lifecycle.domain import (
    ALLOWED,
    TRANSITIONS,
    AgentState,
    AssignTask,
    Command,
    CompleteTask,
    ConfigRejected,
    Configure,
    Initialize,
    Register,
    Resume,
    Suspend,
    Terminate,
    apply,
    decide,
    initial,
)

S = AgentStatus
VALID = AgentConfig(name="summariser", version="1.0.0", capabilities=("web.fetch",), network_access=("example.com",))
INVALID = AgentConfig(name="Not A Label", resources=ResourceLimits(memory_mb=1, cpu_cores=0))
DENY = DecisionRecord(action="agent.register", effect="deny", policy_version=3, policies=("ops.p.1",), reason="no")
ALLOW = DecisionRecord(action="agent.register", effect="allow", policy_version=3, policies=("ops.p.2",))
#: Initialization outcomes: valid and allowed → Ready; invalid → Failed; denied → Failed (agent.denied).
INIT_READY = Initialize(config=VALID, decision=ALLOW)
INIT_INVALID = Initialize(config=INVALID, decision=ALLOW)
INIT_DENIED = Initialize(config=VALID, decision=DENY)

#: The specification's table, spelled out independently of the code under test.
SPEC_TABLE = {
    (S.INITIALIZING, S.READY),
    (S.INITIALIZING, S.FAILED),
    (S.READY, S.RUNNING),
    (S.RUNNING, S.SUSPENDED),
    (S.RUNNING, S.READY),
    (S.SUSPENDED, S.RUNNING),
    (S.SUSPENDED, S.TERMINATED),
    (S.READY, S.TERMINATED),
    (S.FAILED, S.TERMINATED),
}

commands = st.one_of(
    st.builds(Register, config=st.sampled_from([VALID, INVALID])),
    st.sampled_from([INIT_READY, INIT_INVALID, INIT_DENIED]),
    st.builds(AssignTask, task_id=st.sampled_from(["t1", "t2", "bad id!"])),
    st.builds(CompleteTask, task_id=st.sampled_from([None, "t1", "other"])),
    st.builds(Suspend, reason=st.sampled_from(["policy violation", ""])),
    st.builds(Resume),
    st.builds(Terminate),
)


def run(state: AgentState, command: Command) -> tuple[AgentState, list[tuple[AgentStatus | None, AgentStatus]]]:
    """Decide and apply, returning the transitions taken."""
    taken = []
    for event in decide(state, command):
        before = state.status
        state = apply(state, event)
        assert state.status is not None
        taken.append((before, state.status))
    return state, taken


def test_code_table_is_the_spec_table() -> None:
    assert set(TRANSITIONS) == SPEC_TABLE
    assert set(ALLOWED) == set(AgentStatus)


def check_refusal(before: AgentState, command: Command, exc: SymbiError) -> None:
    """A refused command is refused for the right reason, with the right typed error."""
    if isinstance(exc, IllegalTransition):
        assert before.status is not None
        assert exc.state == before.status.value
        assert exc.command == command.name
        assert command.name not in ALLOWED[before.status]
    elif isinstance(exc, AlreadyExists):
        assert before.exists
        assert isinstance(command, Register)
    elif isinstance(exc, NotFound):
        assert not before.exists
    elif isinstance(exc, ValidationError):
        assert exc.field in {"task_id", "reason"}
        assert before.status is not None
        assert command.name in ALLOWED[before.status]
    else:
        raise AssertionError(f"unexpected {exc!r}")


@settings(max_examples=400, deadline=None)
@given(st.lists(commands, max_size=25))
def test_no_command_sequence_leaves_the_table(sequence: list[Command]) -> None:
    state = initial("agent-1")
    for command in sequence:
        before = state
        try:
            state, taken = run(state, command)
        except SymbiError as exc:
            check_refusal(before, command, exc)
            continue
        if isinstance(command, Register):
            assert taken == [(None, S.INITIALIZING)]
        elif isinstance(command, Initialize):
            assert taken == [(S.INITIALIZING, S.READY if command is INIT_READY else S.FAILED)]
        else:
            assert before.status is not None
            assert command.name in ALLOWED[before.status]
            assert len(taken) == 1
            assert taken[0] in SPEC_TABLE


class AgentMachine(RuleBasedStateMachine):
    """Stateful exploration: every allowed command moves along the table, every other one raises."""

    def __init__(self) -> None:
        super().__init__()
        self.state = initial("agent-x")
        self.seen: set[tuple[AgentStatus | None, AgentStatus]] = set()

    def _try(self, command: Command) -> None:
        before = self.state.status
        if before is None and not isinstance(command, Register):
            with pytest.raises(NotFound):
                decide(self.state, command)
            return
        if before is not None and isinstance(command, Register):
            with pytest.raises(AlreadyExists):
                decide(self.state, command)
            return
        if before is not None and command.name not in ALLOWED[before]:
            with pytest.raises(IllegalTransition) as info:
                decide(self.state, command)
            assert before.value in str(info.value)
            return
        self.state, taken = run(self.state, command)
        self.seen.update(taken)

    @rule(valid=st.booleans())
    def register(self, valid: bool) -> None:
        self._try(Register(config=VALID if valid else INVALID))

    @rule(outcome=st.sampled_from([INIT_READY, INIT_INVALID, INIT_DENIED]))
    def initialize(self, outcome: Initialize) -> None:
        self._try(outcome)

    @rule(task=st.sampled_from(["t1", "t2"]))
    def assign(self, task: str) -> None:
        self._try(AssignTask(task_id=task))

    @rule()
    def complete(self) -> None:
        self._try(CompleteTask())

    @rule()
    def suspend(self) -> None:
        self._try(Suspend())

    @rule()
    def resume(self) -> None:
        self._try(Resume())

    @precondition(lambda self: self.state.exists)
    @rule()
    def terminate(self) -> None:
        self._try(Terminate())

    @invariant()
    def only_table_transitions(self) -> None:
        assert {t for t in self.seen if t[0] is not None} <= SPEC_TABLE
        if self.state.status == S.RUNNING:
            assert self.state.current_task is not None
        if self.state.status in (S.READY, S.TERMINATED):
            assert self.state.current_task is None


TestAgentMachine = AgentMachine.TestCase
TestAgentMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def _registered(config: AgentConfig = VALID) -> AgentState:
    state = initial("a")
    for event in decide(state, Register(config=config)):
        state = apply(state, event)
    return state


def test_register_leaves_the_agent_initializing_until_initialize() -> None:
    [registered] = decide(initial("a"), Register(config=VALID, definition="agent a() {}", registered_by="alice"))
    assert isinstance(registered, AgentRegistered)
    assert registered.registered_by == "alice"
    state = apply(initial("a"), registered)
    assert state.status == S.INITIALIZING
    assert state.definition == "agent a() {}"
    [ready] = decide(state, INIT_READY)
    assert isinstance(ready, AgentReady)
    assert ready.decision == ALLOW
    assert ready.config == VALID
    after = apply(state, ready)
    assert after.status == S.READY
    assert after.definition == ""
    with pytest.raises(IllegalTransition):
        decide(after, INIT_READY)


def test_initialize_fails_with_every_problem_or_the_denial() -> None:
    [failed] = decide(_registered(INVALID), INIT_INVALID)
    assert isinstance(failed, AgentFailed)
    fields = {i.field for i in failed.errors}
    assert {"name", "resources.memory_mb", "resources.cpu_cores"} <= fields
    [denied] = decide(_registered(), INIT_DENIED)
    assert isinstance(denied, AgentDenied)
    assert denied.decision == DENY
    state = apply(_registered(), denied)
    assert state.status == S.FAILED
    assert state.errors[0].message == "no"


def test_illegal_transition_names_state_command_and_allowed() -> None:
    state = _registered()
    state = apply(state, decide(state, INIT_READY)[0])
    with pytest.raises(IllegalTransition) as info:
        decide(state, Resume())
    assert info.value.state == "Ready"
    assert info.value.command == "resume"
    assert "assign_task, configure, terminate" in str(info.value)


@given(st.lists(commands, max_size=10))
def test_events_and_state_round_trip(sequence: list[Command]) -> None:
    state = initial("rt")
    for command in sequence:
        try:
            events = decide(state, command)
        except (IllegalTransition, AlreadyExists, NotFound, ValidationError):
            continue
        for event in events:
            tag = type(event).__struct_config__.tag
            assert isinstance(tag, str)
            assert CODEC.decode(CODEC.encode(event), event_type=tag) == event
            state = apply(state, event)
    # Snapshots store the state as msgpack.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=AgentState) == state


def test_validation_reports_every_field() -> None:
    config = convert_config(
        {
            "name": "-bad-",
            "version": "one",
            "capabilities": ["ok", "ok", "Nope"],
            "resources": {
                "memory_mb": 100_000,
                "cpu_cores": 0.01,
                "disk_io_mbps": 0,
                "network_io_mbps": 0,
                "execution_timeout_s": 90_000,
            },
            "security_tier": "tier9",
            "network_access": ["api.example.com", "not a host"],
            "filesystem_access": [{"path": "relative", "mode": "rwx"}],
            "external_apis": ["ftp://x"],
        }
    )
    fields = {i.field for i in validate_config(config)}
    assert fields == {
        "name",
        "version",
        "capabilities[1]",
        "capabilities[2]",
        "resources.memory_mb",
        "resources.cpu_cores",
        "resources.disk_io_mbps",
        "resources.execution_timeout_s",
        "security_tier",
        "network_access[1]",
        "network_access",
        "filesystem_access[0].path",
        "filesystem_access[0].mode",
        "external_apis[0]",
        "external_apis",
    }
    assert validate_config(VALID) == []


def test_policies_the_policy_service_would_refuse_are_config_issues() -> None:
    """Each parsing is not enough: the set must validate against the schema and speak for this agent only, or
    the agent would become Ready while the policy service refuses its policies."""
    own = PolicySpec(name="own", cedar='forbid(principal == Agent::"a-1", action == Action::"tool.invoke", resource);')
    assert validate_config(AgentConfig(name="reader", policies=(own,)), "a-1") == []
    typo = PolicySpec(name="typo", cedar='permit(principal, action == Action::"tool.invok", resource);')
    other = PolicySpec(
        name="other", cedar='permit(principal == Agent::"a-2", action == Action::"tool.invoke", resource);'
    )
    for bad, says in ((typo, "tool.invok"), (other, "may only apply")):
        issues = validate_config(AgentConfig(name="reader", policies=(own, bad)), "a-1")
        assert [i.field for i in issues] == ["policies"]
        assert "would be refused by the policy service" in issues[0].message
        assert says in issues[0].message
    failed = decide(_registered(), Initialize(config=AgentConfig(name="reader", policies=(typo,))))[0]
    assert isinstance(failed, AgentFailed)
    assert failed.errors[0].field == "policies"


def test_a_suspended_agent_may_be_reconfigured_and_stays_suspended() -> None:
    ready = apply(_registered(), decide(_registered(), INIT_READY)[0])
    running = apply(ready, decide(ready, AssignTask(task_id="t1"))[0])
    suspended = apply(running, decide(running, Suspend(reason="tool.invoke denied"))[0])
    stricter = msgspec.structs.replace(VALID, resources=ResourceLimits(memory_mb=128))
    [configured] = decide(suspended, Configure(config=stricter, decision=ALLOW))
    after = apply(suspended, configured)
    assert (after.status, after.config, after.current_task) == (S.SUSPENDED, stricter, "t1")
    with pytest.raises(IllegalTransition):
        decide(running, Configure(config=stricter, decision=ALLOW))


def test_configure_changes_the_config_of_a_ready_agent() -> None:
    ready = apply(_registered(), decide(_registered(), INIT_READY)[0])
    bigger = msgspec.structs.replace(VALID, resources=ResourceLimits(memory_mb=2048))
    [configured] = decide(ready, Configure(config=bigger, decision=ALLOW))
    assert isinstance(configured, AgentConfigured)
    after = apply(ready, configured)
    assert after.status == S.READY
    assert after.config == bigger
    [refused] = decide(ready, Configure(config=bigger, decision=DENY, refused=True))
    assert isinstance(refused, AgentConfigureDenied)
    assert apply(ready, refused) == ready
    with pytest.raises(ConfigRejected) as info:
        decide(ready, Configure(config=INVALID))
    assert {i.field for i in info.value.issues} >= {"name", "resources.memory_mb"}
    with pytest.raises(IllegalTransition):
        decide(_registered(), Configure(config=bigger))
