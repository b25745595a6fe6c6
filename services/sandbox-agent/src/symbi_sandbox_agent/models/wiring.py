"""The host's :class:`ModelGateway` from its ``[models]`` settings (None: no provider configured)."""

from __future__ import annotations

from symbi_common.decisions import Decision, DecisionRecord, DecisionRequest
from symbi_common.errors import ConfigError
from symbi_common.policy.enforcement import GATEWAY_ACTION
from symbi_common.policy.hooks import Enforcer
from symbi_common.secret_source import SecretSource
from symbi_common.service import ServiceRuntime
from symbi_common.settings_sandbox import ModelsSettings, resolve_host_id

from symbi_sandbox_agent.models.budget import TENANT, Limit
from symbi_sandbox_agent.models.callers import CallerDirectory
from symbi_sandbox_agent.models.catalog import catalog_of
from symbi_sandbox_agent.models.gateway import ModelGateway
from symbi_sandbox_agent.models.ledger import BudgetLedger
from symbi_sandbox_agent.models.upstream import Upstreams


def tenant_limits(settings: ModelsSettings) -> dict[str, Limit]:
    limits = {}
    for tenant, budget in settings.tenants.items():
        if not TENANT.match(tenant):
            raise ConfigError("a tenant's name is 1-64 letters, digits, _ and -", setting=f"models.tenants.{tenant}")
        limits[tenant] = Limit(budget.tokens_per_day, budget.micro_usd_per_day)
    return limits


def model_gateway(rt: ServiceRuntime, settings: ModelsSettings, secrets: SecretSource | None) -> ModelGateway | None:
    """Refuses (``ConfigError``) settings that name a bad provider, a model without a price, a CA that cannot
    be read, or a credential while no secrets store is given."""
    if not settings.providers:
        return None

    async def decide(question: DecisionRequest) -> tuple[Decision, DecisionRecord]:
        verdict = await Enforcer.around(await rt.decision_point()).decide(question, GATEWAY_ACTION)
        return verdict.decision, verdict.record

    return ModelGateway(
        catalog=catalog_of(settings.providers),
        upstreams=Upstreams(settings.providers, secrets, settings.max_connections),
        ledger=BudgetLedger(rt.store, tenant_limits(settings)),
        callers=CallerDirectory(rt.store, host_id=resolve_host_id(rt.settings.sandbox.host_id)),
        decide=decide,
        default_max_tokens=settings.default_max_tokens,
        max_request_bytes=settings.max_request_bytes,
    )
