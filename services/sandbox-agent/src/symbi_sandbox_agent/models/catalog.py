"""Which models the gateway offers, through which provider, at what price: from ``[models.providers.*]``. Pure.

A model is named ``provider/model`` (its Cedar resource ``Model::"provider/model"``); a bare ``model`` is
accepted when exactly one provider offers it. Every listed model needs a price, or its money could not be
counted: start-up refuses the settings then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from symbi_common.errors import ConfigError
from symbi_common.secret_source import SECRET_NAME, VAULT_SCHEME
from symbi_common.settings_sandbox import ModelProviderSettings

from symbi_sandbox_agent.models.errors import UnknownModel
from symbi_sandbox_agent.models.pricing import Price

PROVIDER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
#: The parameters a provider may be held to a completion limit by (its ``completion_limit``).
COMPLETION_LIMITS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class Route:
    """One model of one provider: ``model`` is the name the provider knows it by; ``completion_limit`` the
    parameter the gateway adds to a chat request that sets no limit of its own."""

    provider: str
    model: str
    price: Price
    completion_limit: str = "max_tokens"

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Catalog:
    routes: dict[str, Route]

    def resolve(self, name: object) -> Route:
        """The route of ``provider/model`` or of a bare model one provider offers; :class:`UnknownModel`."""
        if not isinstance(name, str) or not name or len(name) > 200:
            raise UnknownModel('the request names no model (a string such as "provider/model")')
        found = self.routes.get(name)
        if found is not None:
            return found
        bare = [r for r in self.routes.values() if r.model == name]
        if len(bare) == 1:
            return bare[0]
        if bare:
            which = ", ".join(sorted(r.name for r in bare))
            raise UnknownModel(f"model {name!r} is offered by more than one provider; name one of {which}")
        offered = ", ".join(sorted(self.routes)) or "none configured"
        raise UnknownModel(f"model {name[:100]!r} is not offered here (offered: {offered})")


def secret_name(provider: str, api_key: str) -> str | None:
    """The secret a provider's ``api_key`` names (``vault://<name>``); None: no credential. A literal key is
    refused: credentials live in the secrets store, never in the settings file."""
    if not api_key:
        return None
    setting = f"models.providers.{provider}.api_key"
    if not api_key.startswith(VAULT_SCHEME):
        raise ConfigError("must be a vault:// reference to the secrets store, not the key itself", setting=setting)
    name = api_key[len(VAULT_SCHEME) :]
    if not SECRET_NAME.match(name):
        raise ConfigError(f"{name!r} is not a secret name (lower-case path segments)", setting=setting)
    return name


def catalog_of(providers: Mapping[str, ModelProviderSettings]) -> Catalog:
    """The catalogue of ``[models.providers.*]``; :class:`ConfigError` names the first bad setting."""
    routes: dict[str, Route] = {}
    for provider, settings in providers.items():
        where = f"models.providers.{provider}"
        if not PROVIDER.match(provider):
            raise ConfigError("a provider's name is lower-case letters, digits, _ and -", setting=where)
        if not settings.base_url.startswith(("https://", "http://")):
            raise ConfigError("must be an http(s) URL such as https://api.openai.com/v1", setting=f"{where}.base_url")
        secret_name(provider, settings.api_key)
        if settings.completion_limit not in COMPLETION_LIMITS:
            raise ConfigError(
                f"{settings.completion_limit!r:.100}: must be one of {', '.join(COMPLETION_LIMITS)}",
                setting=f"{where}.completion_limit",
            )
        for model in settings.models:
            if not model or ("/" in model and model.split("/", 1)[0] == provider):
                raise ConfigError(f"{model!r}: list the provider's own name of the model", setting=f"{where}.models")
            price = settings.prices.get(model)
            if price is None:
                raise ConfigError(
                    f"model {model!r} has no price, so its cost cannot be counted", setting=f"{where}.prices"
                )
            if price.input_micro_usd_per_mtok < 0 or price.output_micro_usd_per_mtok < 0:
                raise ConfigError(f"model {model!r} has a negative price", setting=f"{where}.prices")
            prices = Price(price.input_micro_usd_per_mtok, price.output_micro_usd_per_mtok)
            route = Route(provider, model, prices, settings.completion_limit)
            routes[route.name] = route
    return Catalog(routes)
