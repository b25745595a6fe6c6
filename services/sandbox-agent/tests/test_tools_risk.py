"""The sandbox tier of a tool server from its risk assessment (pure), and the registry's record of it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_contracts.tools.errors import ToolRefused, ToolTierRefused
from symbi_contracts.tools.events import CODEC, ToolServerRegistered, ToolServerTierRaised
from symbi_sandbox_agent.tools.registry import TOOLSERVER, RaiseTier, ServerState
from symbi_sandbox_agent.tools.risk import Assessment, assess, chosen_tier, raised, secrets_in

PINNED = "sha256:" + "a" * 64


def test_a_pinned_signed_server_without_secrets_is_tier1() -> None:
    assert assess(transport="stdio", image=PINNED, domain="tools.example.com", env={"LANG": "C"}) == Assessment(
        "tier1", ()
    )
    assert assess(transport="http", domain="tools.example.com") == Assessment("tier1", ())


@pytest.mark.parametrize(
    ("given", "factor"),
    [
        ({"network": True}, "network_granted"),
        ({"env": {"GITHUB_TOKEN": "x"}}, "secrets_passed:GITHUB_TOKEN"),
        ({"env": {"api_key": "x"}}, "secrets_passed:api_key"),
        ({"env": {"DB": "vault://db/password"}}, "secrets_passed:DB"),
        ({"env": {"PGPASSWORD": "x"}}, "secrets_passed:PGPASSWORD"),
        ({"image": "python:3.12"}, "image_not_pinned"),
        ({"domain": ""}, "no_schemapin_domain"),
        ({"flagged": ["files.read"]}, "flagged_tools:files.read"),
    ],
)
def test_each_factor_puts_the_server_in_tier2(given: dict[str, object], factor: str) -> None:
    fields: dict[str, object] = {"transport": "stdio", "image": PINNED, "domain": "tools.example.com", **given}
    assessment = assess(**fields)  # type: ignore[arg-type]
    assert assessment == Assessment("tier2", (factor,))


def test_factors_are_listed_in_a_stable_order() -> None:
    assessment = assess(transport="stdio", image="x", env={"B_SECRET": "1", "A_KEY": "2"}, flagged=["s.b", "s.a"])
    assert assessment.factors == (
        "secrets_passed:A_KEY",
        "secrets_passed:B_SECRET",
        "image_not_pinned",
        "no_schemapin_domain",
        "flagged_tools:s.a",
        "flagged_tools:s.b",
    )


def test_the_operator_may_raise_the_tier_but_never_lower_it() -> None:
    low, high = Assessment("tier1", ()), Assessment("tier2", ("no_schemapin_domain",))
    assert (chosen_tier("", low), chosen_tier("", high)) == ("tier1", "tier2")
    assert (chosen_tier("tier2", low), chosen_tier("tier2", high)) == ("tier2", "tier2")
    with pytest.raises(ToolTierRefused, match=r"needs at least tier2 \(no_schemapin_domain\)") as refused:
        chosen_tier("tier1", high, "files")
    assert refused.value.details == {"requested": "tier1", "assessed": "tier2", "factors": ["no_schemapin_domain"]}
    assert isinstance(refused.value, ToolRefused)
    assert refused.value.code == "tool_tier_refused"
    with pytest.raises(ToolTierRefused, match="no tier 'tier9'"):
        chosen_tier("tier9", low)


@given(
    st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=12), max_size=5),
    st.booleans(),
    st.sampled_from(["", "tools.example.com"]),
    st.lists(st.text(min_size=1, max_size=8), max_size=3),
)
def test_tier1_exactly_when_nothing_is_found(
    env: dict[str, str], network: bool, domain: str, flagged: list[str]
) -> None:
    assessment = assess(transport="stdio", image=PINNED, domain=domain, env=env, network=network, flagged=flagged)
    nothing = not (network or secrets_in(env) or not domain or flagged)
    assert (assessment.tier == "tier1") == nothing == (assessment.factors == ())
    # Whatever the operator asks for, the tier chosen is never below the assessment.
    for requested in ("", "tier1", "tier2"):
        try:
            tier = chosen_tier(requested, assessment)
        except ToolTierRefused:
            assert (requested, assessment.tier) == ("tier1", "tier2")
        else:
            assert tier >= assessment.tier


def test_flagged_tools_raise_a_running_server_once() -> None:
    assert raised("tier1", []) is None
    assert raised("tier2", ["s.a"]) is None
    assert raised("tier1", ["s.b", "s.a", "s.a"]) == Assessment("tier2", ("flagged_tools:s.a", "flagged_tools:s.b"))


def _apply(state: ServerState, *commands: object) -> ServerState:
    for command in commands:
        for event in TOOLSERVER.decide(state, command):  # type: ignore[arg-type]
            assert CODEC.decode(CODEC.encode(event), event_type=type(event).__struct_config__.tag) == event  # type: ignore[arg-type]
            state = TOOLSERVER.apply(state, event)
    return state


def test_the_registry_records_the_assessment_and_a_raise() -> None:
    reg = ToolServerRegistered(
        server="files",
        transport="stdio",
        image=PINNED,
        command=("python3", "s.py"),
        domain="tools.example.com",
        tier="tier1",
        assessed_tier="tier1",
    )
    state = _apply(TOOLSERVER.initial("files"), reg)
    assert state.registration == reg
    bump = RaiseTier("tier2", ("flagged_tools:files.read",))
    [event] = TOOLSERVER.decide(state, bump)
    assert event == ToolServerTierRaised(tier="tier2", factors=("flagged_tools:files.read",))
    state = _apply(state, bump)
    assert state.registration is not None
    assert (state.registration.tier, state.registration.assessed_tier, state.registration.risk_factors) == (
        "tier2",
        "tier2",
        ("flagged_tools:files.read",),
    )
    assert TOOLSERVER.decide(state, bump) == []
    # Registering the same configuration again is no change, though its tier was raised since.
    assert TOOLSERVER.decide(state, reg) == []
