"""Registering an agent with a body: the body runner's workload (the definition in its environment, the
budgets from the definition), what the body calls checked against the builtins, the input bound to the
parameters, the result rendered. (The runner itself, in real sandboxes: services/sandbox-agent/tests/
test_dsl_run.py.)"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_dsl import DslError, check, compile_agent, parse
from symbi_dsl import ast as A
from symbi_dsl.body import (
    CHUNK_CHARS,
    DEFAULT_RUNNER_IMAGE,
    DEFAULT_SECONDS,
    DEFAULT_STEPS,
    MAX_SOURCE_CHARS,
    RUNNER_COMMAND,
    BodyError,
    bind_params,
    find_agent,
    read_input,
    render,
    runner_env,
    source_from_env,
)
from symbi_dsl.interpreter import Closure, SecretRef

MEMO = """agent memo(note: String) {
  capabilities = [memory]
  with sandbox = tier2, timeout = 30s, steps = 5_000 {
    let stored = memory.store(note, collection: "notes")
    return recall(note).map(m => m.id).contains(stored.memory_id)
  }
}
"""


def test_an_agent_with_a_body_and_no_workload_gets_the_runners() -> None:
    config = compile_agent(MEMO, agent_id="agent-7", file="agents/memo.symbi")
    w = config["workload"]
    assert (w["image"], tuple(w["command"]), w["actions"]) == (DEFAULT_RUNNER_IMAGE, RUNNER_COMMAND, True)
    env = w["env"]
    assert (env["SYMBI_DSL_FILE"], env["SYMBI_DSL_AGENT"]) == ("agents/memo.symbi", "memo")
    # Budgets from the definition: the steps setting; the timeout less the start-up margin.
    assert (env["SYMBI_DSL_STEPS"], env["SYMBI_DSL_SECONDS"]) == ("5000", "27")
    assert source_from_env(env) == MEMO  # the body that runs is the one registered
    assert config["security_tier"] == "tier2"
    assert (
        compile_agent(MEMO, runner_image="symbi/agent-python:dsl-1")["workload"]["image"] == "symbi/agent-python:dsl-1"
    )


def test_default_budgets_and_a_bodiless_agent() -> None:
    plain = MEMO.replace(", timeout = 30s, steps = 5_000", "")
    env = compile_agent(plain)["workload"]["env"]
    assert (env["SYMBI_DSL_STEPS"], env["SYMBI_DSL_SECONDS"]) == (str(DEFAULT_STEPS), f"{DEFAULT_SECONDS:g}")
    bodiless = "agent idle {\n  capabilities = [memory]\n}\n"
    assert "workload" not in compile_agent(bodiless)


def test_a_workload_and_a_body_are_refused_where_the_workload_is() -> None:
    """Only one of them can run; neither is dropped silently: check and registration both name the conflict."""
    own = MEMO.replace("  capabilities", '  workload = {image: "symbi/busybox:1", command: ["true"]}\n  capabilities')
    for run in (lambda: check(own, "memo.symbi"), lambda: compile_agent(own, file="memo.symbi")):
        with pytest.raises(DslError) as info:
            run()
        [d] = [d for d in info.value.diagnostics if d.severity == "error"]
        assert (d.file, d.code, d.line, d.column) == ("memo.symbi", "conflict", 2, 3)
        assert "agent memo has both a workload and a body (line 5)" in d.message
        assert str(info.value).startswith("memo.symbi:2:3: error[conflict]")
    # Settings without statements are the workload's: the agent runs its container.
    settings_only = own.replace(MEMO[MEMO.index("    let") : MEMO.rindex("  }")], "")
    assert compile_agent(settings_only)["workload"] == {"image": "symbi/busybox:1", "command": ["true"]}


@pytest.mark.parametrize(("steps", "message"), [("0", "between 1"), ("2.5", "a whole number"), ("x", "a number")])
def test_a_bad_step_budget_is_an_error(steps: str, message: str) -> None:
    with pytest.raises(DslError) as info:
        check(MEMO.replace("5_000", steps))
    assert [d.code for d in info.value.diagnostics if d.severity == "error"] in (["range"], ["type"], ["value"])
    assert message in str(info.value)


def test_registration_refuses_a_body_calling_what_symbi_does_not_provide() -> None:
    source = """agent worker(job: Json) {
  function helper(x: Json) {
    return x
  }
  with {
    let f = y => y
    let a = helper(f(job))
    for item in [1] {
      analyze(item, a)
    }
  }
}
"""
    program = check(source, "worker.symbi")  # Symbiont accepts it: a warning for check
    assert [(d.code, d.line, d.column) for d in program.warnings] == [("unsupported", 9, 7)]
    assert "the body calls analyze(), which Symbi does not provide" in program.warnings[0].message
    with pytest.raises(DslError) as info:
        compile_agent(source, file="worker.symbi")
    assert [(d.severity, d.code, d.line) for d in info.value.diagnostics] == [("error", "unsupported", 9)]


def test_a_definition_too_long_to_carry_is_refused() -> None:
    padding = "// " + "x" * 96 + "\n"
    source = MEMO + padding * (MAX_SOURCE_CHARS // len(padding) + 1)
    with pytest.raises(DslError, match="at most 400000 can be run"):
        compile_agent(source)
    with pytest.raises(BodyError):
        source_from_env({})


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=3 * CHUNK_CHARS))
def test_the_definition_survives_the_environment(source: str) -> None:
    env = runner_env(source, file="f.symbi", agent="a", steps=1, seconds=1.0)
    assert all(len(v) <= 4096 for v in env.values())
    assert source_from_env(env) == source


def test_the_input_binds_to_the_parameters() -> None:
    one = find_agent(parse("agent a(text: String) {\n}\n"), None)
    assert bind_params(one.params, read_input(b"plain words")) == ({"input": "plain words", "text": "plain words"}, [])
    two = find_agent(parse("agent b(x: int, y: int = 2) {\n}\n"), "b")
    env, unbound = bind_params(two.params, read_input(b'{"x": 1}'))
    assert env == {"input": {"x": 1}, "x": 1}
    assert [p.name for p in unbound] == ["y"]
    with pytest.raises(BodyError, match="no agent 'c'"):
        find_agent(parse("agent a {\n}\n"), "c")


def test_the_result_is_text_or_json() -> None:
    assert render(None) == ""
    assert render("done") == "done"
    fn = Closure(("x",), A.Name("x"), {})
    assert json.loads(render({"n": 1, "f": fn, "s": SecretRef("k")})) == {"n": 1, "f": "<closure>", "s": "<secretref>"}
