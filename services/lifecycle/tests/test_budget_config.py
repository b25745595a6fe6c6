"""An agent's model budget (docs/models.md) is checked with the rest of its configuration."""

from __future__ import annotations

from symbi_contracts.lifecycle.config import AgentBudget, AgentConfig
from symbi_lifecycle.config import validate_config


def test_a_budget_is_optional_and_never_negative() -> None:
    assert validate_config(AgentConfig(name="spender")) == []
    assert validate_config(AgentConfig(name="spender", budget=AgentBudget(tokens_per_day=0, micro_usd_per_day=5))) == []
    issues = validate_config(AgentConfig(name="spender", budget=AgentBudget(tokens_per_day=-1, micro_usd_per_day=-2)))
    assert [i.field for i in issues] == ["budget.tokens_per_day", "budget.micro_usd_per_day"]
