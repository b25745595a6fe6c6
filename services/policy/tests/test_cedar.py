"""Validation of policy text: Cedar's message and the line of the offending policy; condition annotations."""

from __future__ import annotations

import re

import pytest
from symbi_common.decisions import ACTIONS
from symbi_common.errors import ValidationError
from symbi_common.policy.cedar import PolicyRejected, compile_policies, schema_text, split_statements
from symbi_common.policy.conditions import BadCondition, conditions_of

GOOD = """// two policies
@id("read-own")
permit(principal is Agent, action == Action::"memory.read", resource is Memory)
when { resource in principal };

@id("no-phi")
@reason("no phi")
forbid(principal, action == Action::"data.read", resource is Data)
when { resource has classification && resource.classification == "phi" };
"""


def test_schema_covers_every_action_of_the_enforcement_points() -> None:
    declared = set(re.findall(r'"([a-z]+\.[a-z_]+)"', schema_text()))
    assert set(ACTIONS) <= declared


def test_statements_and_their_lines() -> None:
    text = '// a; comment\n@id("x;y")\npermit(principal, action, resource)\nwhen { context has s && context.s == ";" };\n\n  forbid(principal, action, resource);'
    statements = split_statements(text)
    assert [s.line for s in statements] == [2, 6]


def test_compiles_names_and_annotations() -> None:
    policies = compile_policies("s1", GOOD)
    assert [(p.name, p.effect, p.line) for p in policies] == [("read-own", "permit", 2), ("no-phi", "forbid", 6)]
    assert policies[1].annotations["reason"] == "no phi"
    assert policies[0].internal_id == "s1/read-own"


def test_unnamed_policies_get_positional_names() -> None:
    policies = compile_policies("s1", "permit(principal, action, resource);\nforbid(principal, action, resource);")
    assert [p.name for p in policies] == ["s1#0", "s1#1"]


def test_a_syntax_error_is_reported_with_cedars_message_and_line() -> None:
    bad = GOOD.replace('resource.classification == "phi" }', "resource.classification == }")
    with pytest.raises(PolicyRejected) as err:
        compile_policies("s1", bad)
    assert err.value.line == 6
    assert "line 6" in str(err.value)
    assert "unexpected token" in str(err.value)
    assert err.value.details["line"] == 6


def test_a_policy_that_breaks_the_schema_is_rejected_naming_it() -> None:
    bad = GOOD.replace("resource has classification && ", "")
    with pytest.raises(PolicyRejected) as err:
        compile_policies("s1", bad)
    assert err.value.line == 6
    assert err.value.policy == "no-phi"
    assert "optional attribute `classification`" in str(err.value)


def test_an_unknown_action_is_rejected() -> None:
    with pytest.raises(PolicyRejected, match="unrecognized action"):
        compile_policies("s1", 'permit(principal, action == Action::"fly", resource);')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "contains no policy"),
        ("// only a comment\n", "contains no policy"),
        (
            '@id("a")\npermit(principal, action, resource);\n@id("a")\nforbid(principal, action, resource);',
            "two policies",
        ),
        ('@require_approval("maybe")\npermit(principal, action, resource);', "must be"),
        ('@cap_resources("memory_mb=lots")\npermit(principal, action, resource);', "must be a number"),
        ('@redact("")\npermit(principal, action, resource);', "at least one field"),
    ],
)
def test_bad_sets_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        compile_policies("s1", text)


def test_a_bad_set_id_is_rejected() -> None:
    with pytest.raises(ValidationError, match="set_id"):
        compile_policies("a.b", GOOD)


def test_condition_annotations() -> None:
    conds = conditions_of(
        {
            "require_approval": "true",
            "redact": "a, b",
            "log_full": "false",
            "cap_resources": "memory_mb=512,cpu_cores=0.5",
        },
        "p",
    )
    assert [(c.kind, c.params) for c in conds] == [
        ("require_approval", {}),
        ("redact", {"fields": ["a", "b"]}),
        ("cap_resources", {"memory_mb": 512, "cpu_cores": 0.5}),
    ]
    with pytest.raises(BadCondition):
        conditions_of({"cap_resources": "memory_mb"}, "p")
