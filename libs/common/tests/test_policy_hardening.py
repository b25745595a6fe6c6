"""Policy text that used to kill the process or open a door: refused or denied instead.

The crashing inputs are only ever given to Cedar in a subprocess unless :func:`check_shape` exists (this module
imports it, so against code without it the module fails to import instead of crashing pytest).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from symbi_common.decisions import Allow, DecisionRequest, Deny, EntityRef
from symbi_common.policy.agent_sets import agent_policy_text
from symbi_common.policy.cedar import PolicyRejected, check_shape, compile_policies
from symbi_common.policy.engine import PolicyEngine
from symbi_common.policy.shape import MAX_IFS, MAX_NESTING, MAX_OPERATORS, shape_problem
from symbi_contracts.lifecycle.config import PolicySpec

ROOT = Path(__file__).resolve().parents[3]


def _when(body: str) -> str:
    return f"permit(principal, action, resource) when {{ {body} }};"


#: Each of these overflowed the stack of Cedar's parser (SIGSEGV) before it was checked.
CRASHERS = {
    "parens": _when("(" * 800 + "true" + ")" * 800),
    "brackets": _when("[" * 5000 + "1" + "]" * 5000 + " == [1]"),
    "ifs": _when("if true then " * 5000 + "true" + " else true" * 5000),
    "plus": _when(" + ".join(["1"] * 30000) + " > 0"),
    "attributes": _when("context" + ".a" * 30000 + " == 1"),
    "ands": _when(" && ".join(["true"] * 30000)),
}


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_deeply_nested_cedar_is_refused_before_cedar_parses_it(name: str) -> None:
    text = CRASHERS[name]
    assert shape_problem(text) is not None
    with pytest.raises(PolicyRejected):
        check_shape(text)
    if len(text.encode()) <= 128 * 1024:
        with pytest.raises(PolicyRejected, match=r"nested|more than"):
            compile_policies("deep", text)
    with pytest.raises(PolicyRejected, match=r"nested|more than"):
        agent_policy_text("a1", (PolicySpec(name="deep", cedar=text),))


_CHILD = """
import sys
from symbi_common.policy.cedar import PolicyRejected, compile_policies
from symbi_common.policy.agent_sets import agent_policy_text
from symbi_contracts.lifecycle.config import PolicySpec
text = "permit(principal, action, resource) when { " + "(" * 800 + "true" + ")" * 800 + " };"
for compile_ in (lambda: compile_policies("deep", text), lambda: agent_policy_text("a1", (PolicySpec(name="d", cedar=text),))):
    try:
        compile_()
    except PolicyRejected as exc:
        print("refused:", exc.message)
    else:
        sys.exit("accepted")
"""


def test_the_process_survives_deeply_nested_cedar() -> None:
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.count("refused:") == 2


def test_shipped_policies_are_well_inside_the_bounds() -> None:
    texts = [
        ROOT / "services/policy/src/symbi_policy/baseline.cedar",
        *sorted((ROOT / "examples/policies").glob("*.cedar")),
    ]
    assert len(texts) > 1
    for path in texts:
        text = path.read_text()
        assert shape_problem(text) is None, path
        compile_policies("shipped", text)
    # Up to the bounds is fine: the bounds refuse nothing a policy needs.
    nested = _when("(" * (MAX_NESTING - 1) + "true" + ")" * (MAX_NESTING - 1))
    ifs = _when(" && ".join(["(if true then true else false)"] * MAX_IFS))
    long = _when(" || ".join(["context has a"] * ((MAX_OPERATORS - 1) // 2)))
    for text in (nested, ifs, long):
        assert shape_problem(text) is None
    assert shape_problem(_when("(" * (MAX_NESTING + 1) + "true" + ")" * (MAX_NESTING + 1))) is not None


def test_strings_and_comments_do_not_count() -> None:
    text = '// ((((((((((((((((((((((((((((((((((((((((\n@reason("' + "[" * 100 + '")\n' + _when("true")
    assert shape_problem(text) is None


def test_a_chain_too_long_for_the_json_form_is_refused() -> None:
    """Under the operator bound, but nested past what engines read back: refused, not a broken engine."""
    text = _when(" && ".join(["true"] * 100))
    with pytest.raises(PolicyRejected, match="nested too deeply"):
        compile_policies("long", text)


# --- a forbid that errors denies, whatever its @id -----------------------------------------------------

OVERFLOW = (
    'forbid(principal, action == Action::"network.connect", resource) '
    "when { context has port && context.port * 9223372036854775807 > 0 };"
)
REQUEST = DecisionRequest(
    principal=EntityRef(type="Agent", id="a1"),
    action="network.connect",
    resource=EntityRef(type="Endpoint", id="example.org"),
    context={"port": 443},
)


def test_a_backtick_in_a_policy_id_is_refused() -> None:
    text = f'permit(principal, action, resource);\n@id("no`guard") {OVERFLOW}'
    with pytest.raises(PolicyRejected, match="backtick") as info:
        compile_policies("s", text)
    assert info.value.line == 2


def test_a_forbid_whose_error_names_no_known_policy_denies() -> None:
    """An error the engine cannot attribute (here an id it does not know) might be a forbid's: it denies."""
    compiled = compile_policies("s", f'permit(principal, action, resource);\n@id("guard") {OVERFLOW}')
    engine = PolicyEngine({"s": compiled}, 1)
    decision = engine.decide(REQUEST)
    assert isinstance(decision, Deny)
    assert decision.code == "forbid_error"
    assert decision.policies == ("guard",)
    # The same forbid under an id the errors do not map back to (as a backtick made it): still denied.
    engine._policies = {("s/hidden" if p.effect == "forbid" else k): p for k, p in engine._policies.items()}
    decision = engine._decide(REQUEST)
    assert isinstance(decision, Deny)
    assert decision.code == "forbid_error"
    # Only a permit erring (no forbid involved) still just does not grant.
    permits = compile_policies("p", OVERFLOW.replace("forbid", "permit"))
    assert isinstance(PolicyEngine({"p": permits}, 1).decide(REQUEST), Deny)
    both = compile_policies("b", f"permit(principal, action, resource);\n{OVERFLOW.replace('forbid', 'permit')}")
    assert isinstance(PolicyEngine({"b": both}, 1).decide(REQUEST), Allow)


# --- metric labels stay bounded ------------------------------------------------------------------------


def _action_labels() -> set[str]:
    from symbi_common.telemetry import POLICY_DECISION_SECONDS, POLICY_DECISIONS

    return {
        sample.labels["action"]
        for metric in (POLICY_DECISIONS, POLICY_DECISION_SECONDS)
        for family in metric.collect()
        for sample in family.samples
        if "action" in sample.labels
    }


def test_invented_actions_share_one_metric_label() -> None:
    from symbi_common.policy.observed import observed, observed_batch

    before = _action_labels()
    requests = [msgspec.structs.replace(REQUEST, action=f"invented.{i}") for i in range(100)]
    for request in requests[:50]:
        with observed("service", request) as out:
            out.append(Deny(reason="no", policy_version=1))
    with observed_batch("service", requests[50:]) as out:
        out.extend(Deny(reason="no", policy_version=1) for _ in requests[50:])
    with observed("service", REQUEST) as out:
        out.append(Allow(policy_version=1))
    added = _action_labels() - before
    assert added <= {"other", "network.connect", "batch"}
    assert not any(label.startswith("invented.") for label in _action_labels())
