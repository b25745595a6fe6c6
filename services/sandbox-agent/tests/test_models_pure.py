"""The pure pieces of the model gateway: estimates, prices, the budget fold and what Cedar sees, the catalogue."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_common.errors import ConfigError
from symbi_common.settings_sandbox import ModelsSettings
from symbi_contracts.models.events import BudgetReconciled, BudgetReleased, BudgetReserved
from symbi_sandbox_agent.models.budget import (
    BudgetState,
    Limit,
    aggregate_id,
    apply,
    budget_context,
    day_of,
    shortfalls,
)
from symbi_sandbox_agent.models.catalog import catalog_of
from symbi_sandbox_agent.models.errors import UnknownModel
from symbi_sandbox_agent.models.pricing import (
    Price,
    Spend,
    chat_prompt_tokens,
    cost,
    embedding_input_tokens,
    reservation,
    text_tokens,
)
from symbi_sandbox_agent.models.wire import MAX_REPORTED_TOKENS, StreamTally, usage_of


def reserved(rid: str, agent: str = "a", tokens: int = 10, micro_usd: int = 5) -> BudgetReserved:
    return BudgetReserved(
        reservation_id=rid, agent_id=agent, task_id="t", model="p/m", tokens=tokens, micro_usd=micro_usd
    )


def test_estimates_err_high_and_prices_round_up() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abcd") == 2  # 4 bytes at 3 a token, rounded up
    assert text_tokens("é") == 1
    body = {
        "messages": [
            {"role": "user", "content": "hello there"},
            {"role": "user", "content": [{"type": "text", "text": "abc"}]},
        ]
    }
    assert chat_prompt_tokens(body) == 3 + 4 + 4 + 4 + 1
    assert embedding_input_tokens({"input": ["abc", "abcdef", [1, 2, 3]]}) == 1 + 2 + 3
    assert cost(Price(1, 1), 1, 0) == 1  # a millionth of a micro-dollar is still one
    assert cost(Price(2_000_000, 3_000_000), 10, 5) == 35
    assert reservation(Price(1_000_000, 2_000_000), 7, 16) == Spend(23, 39)


def test_the_fold_holds_reconciles_and_releases() -> None:
    state = apply(apply(BudgetState(), reserved("r1")), reserved("r2", agent="b", tokens=20, micro_usd=8))
    assert state.committed("a") == Spend(10, 5)
    assert state.committed() == Spend(30, 13)
    state = apply(state, BudgetReconciled(reservation_id="r1", input_tokens=3, output_tokens=2, micro_usd=4))
    state = apply(state, BudgetReleased(reservation_id="r2", reason="upstream 500"))
    assert state.committed() == Spend(5, 4)
    assert not state.open
    assert state.usage[("a", "p/m")].calls == 1
    # Settling a reservation twice (or one never made) changes nothing.
    again = apply(state, BudgetReleased(reservation_id="r1", reason="late"))
    assert again == state


def test_what_cedar_sees_and_which_budget_is_short() -> None:
    state = apply(BudgetState(), reserved("r1", tokens=90, micro_usd=5))
    context = budget_context(state, "a", Limit(tokens=100), Limit(micro_usd=7), Spend(20, 3))
    assert context == {
        "limited": True,
        "tokens_requested": 20,
        "micro_usd_requested": 3,
        "agent_tokens_left": 10,
        "tenant_micro_usd_left": 2,
    }
    assert [(s.scope, s.unit, s.left) for s in shortfalls(context)] == [
        ("agent", "tokens", 10),
        ("tenant", "micro_usd", 2),
    ]
    unset = budget_context(state, "a", Limit(), Limit(), Spend(1, 1))
    assert unset["limited"] is False
    assert shortfalls(unset) == []
    over = budget_context(apply(state, reserved("r2", tokens=50)), "a", Limit(tokens=100), Limit(), Spend())
    assert over["agent_tokens_left"] == 0  # never below zero


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 1000), st.integers(0, 1000)), max_size=40)
)
def test_committed_is_what_is_reserved_and_not_settled_plus_what_was_reconciled(
    ops: list[tuple[int, int, int, int]],
) -> None:
    state = BudgetState()
    held: dict[str, int] = {}
    used = 0
    for kind, n, tokens, spent in ops:
        rid = f"r{n}"
        if kind == 0 and rid not in held:
            state = apply(state, reserved(rid, tokens=tokens))
            held[rid] = tokens
        elif kind == 1:
            state = apply(state, BudgetReconciled(reservation_id=rid, input_tokens=spent, output_tokens=0, micro_usd=0))
            if held.pop(rid, None) is not None:
                used += spent
        else:
            state = apply(state, BudgetReleased(reservation_id=rid, reason="x"))
            held.pop(rid, None)
    assert state.committed().tokens == used + sum(held.values())


def test_stream_tally_reads_usage_across_chunk_boundaries() -> None:
    tally = StreamTally()
    stream = b'data: {"choices":[{"delta":{"content":"abcdef"}}]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\ndata: [DONE]\n\n'
    for i in range(0, len(stream), 7):
        tally.feed(stream[i : i + 7])
    assert tally.usage == (4, 2)
    assert tally.text_tokens == 2
    assert tally.done


def test_days_and_aggregates() -> None:
    assert day_of(0) == "19700101"
    assert aggregate_id("20261205", "acme-1") == "20261205-acme-1"


def settings(**provider: object) -> ModelsSettings:
    base = {"base_url": "https://api.example.com/v1", "models": ["m"], "prices": {"m": {"input_micro_usd_per_mtok": 1}}}
    return msgspec.convert({"providers": {"p": {**base, **provider}}}, ModelsSettings)


def test_the_catalogue_resolves_names_and_refuses_bad_settings() -> None:
    catalog = catalog_of(settings().providers)
    assert catalog.resolve("p/m").model == "m"
    assert catalog.resolve("m").name == "p/m"
    with pytest.raises(UnknownModel, match="not offered"):
        catalog.resolve("q/m")
    with pytest.raises(ConfigError, match="no price"):
        catalog_of(settings(models=["m", "n"]).providers)
    with pytest.raises(ConfigError, match="vault://"):
        catalog_of(settings(api_key="sk-literal").providers)
    with pytest.raises(ConfigError, match="http"):
        catalog_of(settings(base_url="ftp://x").providers)


def test_the_completion_limit_is_a_parameter_providers_know() -> None:
    """``max_tokens`` unless the provider says ``max_completion_tokens``; anything else fails start-up."""
    assert catalog_of(settings().providers).resolve("p/m").completion_limit == "max_tokens"
    reasoning = catalog_of(settings(completion_limit="max_completion_tokens").providers)
    assert reasoning.resolve("p/m").completion_limit == "max_completion_tokens"
    for bad in ("max_output_tokens", "MAX_TOKENS", ""):
        with pytest.raises(ConfigError, match="max_tokens, max_completion_tokens") as refused:
            catalog_of(settings(completion_limit=bad).providers)
        assert refused.value.setting == "models.providers.p.completion_limit"


def test_the_pure_modules_load_no_io() -> None:
    import subprocess
    import sys

    pure = ("pricing", "budget", "wire", "errors", "catalog")
    io = ("nats", "docker", "asyncpg", "asyncio", "fastapi", "httpx", "structlog")
    code = "import sys\n" + "".join(f"import symbi_sandbox_agent.models.{m}\n" for m in pure)
    code += f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({io!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1_000_000, "completion_tokens": 5},  # would give budget back
        {"prompt_tokens": 5, "completion_tokens": -1},
        {"prompt_tokens": True, "completion_tokens": 5},
        {"prompt_tokens": 5.5, "completion_tokens": 5},
        {"prompt_tokens": MAX_REPORTED_TOKENS + 1, "completion_tokens": 0},
        {"completion_tokens": 5},
        "lots",
    ],
)
def test_a_usage_the_provider_reports_is_taken_only_when_it_is_a_count(usage: object) -> None:
    """A provider's report that is not a count from 0 up is no report: the gateway counts the reply itself."""
    assert usage_of({"usage": usage}) is None
    tally = StreamTally()
    tally.feed(b"data: " + msgspec.json.encode({"usage": usage, "choices": [{"delta": {"content": "hi"}}]}) + b"\n")
    assert tally.usage is None
    assert tally.text_tokens > 0
    assert usage_of({"usage": {"prompt_tokens": 0, "completion_tokens": 7}}) == (0, 7)
