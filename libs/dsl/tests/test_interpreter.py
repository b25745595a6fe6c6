"""The body interpreter: statements and expressions as the grammar has them, budgets, errors with positions."""

from __future__ import annotations

from typing import Any

import pytest
from symbi_dsl import ast as A
from symbi_dsl import parse
from symbi_dsl.interpreter import Budget, BudgetExceeded, DslRuntimeError, Interpreter, SecretRef


def run(body: str, builtins: dict[str, Any] | None = None, budget: Budget | None = None, **env: Any) -> Any:
    """Run ``body`` as the body of ``function main()``, with the file's other functions defined."""
    module = parse(f"function main() {{\n{body}\n}}\n", "agent.symbi")
    functions = [i for i in module.items if isinstance(i, A.Function)]
    main = next(f for f in functions if f.name == "main")
    return Interpreter(builtins, functions=functions, budget=budget, file="agent.symbi").run(main.body, env)


def test_arithmetic_strings_and_precedence() -> None:
    assert run("return 1 + 2 * 3 - 10 / 5") == 5
    assert run("return 7 / 2") == 3.5
    assert run("return 10_000 % 7") == 10_000 % 7
    assert run('return "a" + "b" == "ab" && !(1 > 2) || false') is True
    assert run("return 5m + 30s") == 330.0  # durations are seconds
    assert run('return "b" in ["a", "b"] and not ("z" in "abc")') is True


def test_assignments_including_compound_and_targets() -> None:
    body = """
let total = 0;
let stats = {count: 0, items: []};
for x in [1, 2, 3, 4] {
  total += x;
  total *= 2;
  stats.count += 1;
  stats.items.push(x);
}
stats["total"] = total;
total -= 1;
stats
"""
    assert run(body) == {"count": 4, "items": [1, 2, 3, 4], "total": 52}


def test_if_expressions_match_with_block_arms_and_if_let() -> None:
    body = """
let label = if n > 10 { "big" } else if n > 5 { "medium" } else { "small" };
let action = match label {
  "big" => { let twice = n * 2; twice },
  "medium" => n,
  _ => 0,
};
if let Some(v) = lookup(label) {
  return [label, action, v];
}
return [label, action, null];
"""
    table = {"big": "B"}
    assert run(body, {"lookup": table.get}, n=12) == ["big", 24, "B"]
    assert run(body, {"lookup": table.get}, n=7) == ["medium", 7, None]


def test_functions_lambdas_named_arguments_and_methods() -> None:
    source = """
let findings = [{severity: "critical", type: "sqli"}, {severity: "low", type: "typo"}];
let critical = findings.filter(f => f.severity == "critical").map(f => f.type);
return greet(name = critical.join(", "), greeting: "hi");
}

function greet(name: String, greeting: String) -> String {
  return greeting + " " + name;
"""
    assert run(source) == "hi sqli"


def test_type_literals_secrets_and_builtins() -> None:
    seen: list[Any] = []

    def publish(topic: str, payload: Any) -> str:
        seen.append((topic, payload))
        return "ok"

    body = 'let key = vault://api/key;\nreturn publish("alerts", Alert { level: "high", key: key });'
    assert run(body, {"publish": publish}) == "ok"
    assert seen == [("alerts", {"level": "high", "key": SecretRef("api/key")})]


def test_try_catch_typed_and_untyped() -> None:
    def fetch(url: str) -> str:
        raise ConnectionError(f"cannot reach {url}")

    body = """
try {
  fetch("https://x.example");
} catch (ConnectionError e) {
  return "retry: " + e.message;
} catch (e) {
  return "other";
}
"""
    assert run(body, {"fetch": fetch}) == "retry: cannot reach https://x.example"
    assert run(body.replace("ConnectionError e", "ValueError e"), {"fetch": fetch}) == "other"
    assert run('try { missing(); } catch { return "caught"; }') == "caught"


def test_errors_name_file_line_and_column() -> None:
    with pytest.raises(DslRuntimeError) as info:
        run('let x = 1;\nreturn x + "a";')
    assert str(info.value) == "agent.symbi:3:8: cannot apply + to a number and a string"
    with pytest.raises(DslRuntimeError) as info:
        run("return nope;")
    assert str(info.value) == "agent.symbi:2:8: 'nope' is not defined"
    assert info.value.kind == "NameError"


def test_no_host_access_beyond_builtins() -> None:
    for body in ('return "x".__class__;', "return [].append;", "return {}.keys.__self__;"):
        with pytest.raises(DslRuntimeError):
            run(body)
    with pytest.raises(DslRuntimeError, match="not callable"):
        run('return "x"();')


def test_step_budget_stops_a_runaway_body_and_cannot_be_caught() -> None:
    body = """
try {
  for i in range(1000) { for j in range(1000) { let x = i * j; } }
} catch (e) {
  return "caught";
}
"""
    with pytest.raises(BudgetExceeded, match="more than 5000 steps"):
        run(body, {"range": lambda n: list(range(n))}, Budget(steps=5000))


def test_time_budget_uses_the_clock() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.01
        return now[0]

    with pytest.raises(BudgetExceeded, match="longer than 1s"):
        run(
            "for i in range(100000) { let x = i; }", {"range": lambda n: list(range(n))}, Budget(seconds=1, clock=clock)
        )


def test_recursion_is_a_budget_error() -> None:
    source = "return down(10000000);\n}\n\nfunction down(n: int) -> int {\n  return down(n - 1);"
    with pytest.raises(BudgetExceeded):
        run(source, budget=Budget(steps=10**9))
