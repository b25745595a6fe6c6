"""The sandbox tier of an agent's tasks, by the shared risk assessment of :mod:`symbi_contracts.sandbox_agent.risk`.

The factors the definition itself gives (network allow-list, filesystem grants, external APIs) are
always known; the data sensitivity of the input and the trust in the code's source are not declared
anywhere yet, so they stay unknown and the assessment falls back to ``[security] default_sandbox_tier``
unless the known factors already call for Tier 2. A definition's ``security_tier`` wins over the score.
The model assesses an agent once, when its ``agent.registered`` event arrives (a definition never changes).
"""

from __future__ import annotations

from symbi_common.errors import SymbiError
from symbi_contracts.lifecycle.config import AgentConfig
from symbi_contracts.sandbox_agent.risk import RiskAssessment, assess, factors_for_agent


def assess_agent(config: AgentConfig | None, default_tier: str) -> RiskAssessment:
    """The tier, score and factors for tasks of an agent with ``config`` (default tier if unknown)."""
    if config is None:
        return assess(factors_for_agent(), default_tier=default_tier)
    factors = factors_for_agent(
        network_access=config.network_access,
        filesystem_access=[(p.path, p.mode) for p in config.filesystem_access],
        external_apis=config.external_apis,
    )
    try:
        return assess(factors, forced=config.security_tier, default_tier=default_tier)
    except SymbiError:  # an invalid definition (its agent is Failed and never runs): record the default
        return assess(factors, default_tier=default_tier)
