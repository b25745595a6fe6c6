"""An agent's own rules name the models it may call (``model.invoke("provider/model")``, docs/models.md); they
compile to Cedar on ``Model`` resources that the policy schema accepts, and may test the budget context."""

from __future__ import annotations

from symbi_common.policy.cedar import compile_policies
from symbi_contracts.lifecycle.config import AgentBudget, AgentConfig
from symbi_dsl import compile_agent


def test_model_rules_compile_to_cedar_on_models() -> None:
    config = compile_agent(
        """agent a() {
  policy models {
    allow: model.invoke("openai/gpt-4o-mini")
    deny: model.invoke if context.stream == true
  }
}""",
        agent_id="a-1",
    )
    [policy] = config["policies"]
    assert 'resource == Model::"openai/gpt-4o-mini"' in policy["cedar"]
    assert 'action == Action::"model.invoke"' in policy["cedar"]
    assert len(compile_policies("agent-a-1", policy["cedar"])) == 2  # valid against the schema


def test_a_budget_in_the_definition_becomes_the_agents_budget() -> None:
    config = compile_agent("agent a() {\n  budget = { tokens_per_day: 200000, usd_per_day: 2.5 }\n}", agent_id="a-1")
    assert config["budget"] == {"tokens_per_day": 200000, "micro_usd_per_day": 2_500_000}
    AgentConfig(**{**config, "budget": AgentBudget(**config["budget"])})  # the contract's shape
