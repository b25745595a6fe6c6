"""The providers behind the gateway: one pooled keep-alive HTTPS client each, and the credential injected per
request from the secrets store. Nothing of the sandbox's request headers is passed on (its ``Authorization``
least of all); nothing of the provider's answer but its status, content type and body comes back.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping

import httpx
from symbi_common.errors import ConfigError, SymbiError
from symbi_common.secret_source import SecretNotFound, SecretSource
from symbi_common.settings_sandbox import ModelProviderSettings

from symbi_sandbox_agent.models.catalog import secret_name
from symbi_sandbox_agent.models.errors import ModelError, ModelUnavailable, UpstreamFailed

#: How long a credential read from the secrets store is used before it is read again (rotation).
CREDENTIAL_TTL_S = 60.0


def _tls(provider: str, settings: ModelProviderSettings) -> ssl.SSLContext | bool:
    if not settings.ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the CA bundle: {exc}", setting=f"models.providers.{provider}.ca_file") from None


class Upstreams:
    """The providers' clients; ``secrets`` reads the credentials (None: no provider may name one)."""

    def __init__(
        self, providers: Mapping[str, ModelProviderSettings], secrets: SecretSource | None, max_connections: int = 100
    ) -> None:
        self.secrets = secrets
        self._secret_names: dict[str, str | None] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._credentials: dict[str, tuple[float, str]] = {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        for name, settings in providers.items():
            self._secret_names[name] = secret_name(name, settings.api_key)
            if self._secret_names[name] is not None and secrets is None:
                raise ConfigError(
                    "names a credential but this host has no secrets store", setting=f"models.providers.{name}.api_key"
                )
            self._clients[name] = httpx.AsyncClient(
                base_url=settings.base_url.rstrip("/") + "/",
                verify=_tls(name, settings),
                limits=limits,
                timeout=httpx.Timeout(settings.timeout_s, connect=10.0),
                trust_env=False,  # the provider is reached directly, never through a proxy of the environment
            )

    async def _credential(self, provider: str) -> str | None:
        name = self._secret_names.get(provider)
        if name is None:
            return None
        cached = self._credentials.get(provider)
        now = time.monotonic()
        if cached is not None and now - cached[0] < CREDENTIAL_TTL_S:
            return cached[1]
        assert self.secrets is not None
        try:
            value = (await self.secrets.get(name)).decode("utf-8").strip()
        except SecretNotFound:
            raise ModelUnavailable(
                f"the credential of provider {provider} ({name}) is not in the secrets store; "
                f"set it with `symbi secrets set {name}`",
                sent=False,
            ) from None
        except UnicodeDecodeError:
            raise ModelUnavailable(
                f"the credential of provider {provider} ({name}) is not UTF-8 text", sent=False
            ) from None
        self._credentials[provider] = (now, value)
        return value

    async def send(self, provider: str, path: str, body: bytes, *, accept: str) -> httpx.Response:
        """POST ``body`` to the provider's ``path`` (relative to its base URL) and return the response with its
        body not yet read (the caller reads or streams it, then closes it). :class:`UpstreamFailed` if the
        provider cannot be reached."""
        client = self._clients[provider]
        headers = {"content-type": "application/json", "accept": accept}
        try:
            credential = await self._credential(provider)
        except ModelError:
            raise
        except SymbiError as exc:  # the secrets store failed: nothing was sent
            raise ModelUnavailable(
                f"the credential of provider {provider} could not be read: {exc}", sent=False
            ) from None
        if credential is not None:
            headers["authorization"] = f"Bearer {credential}"
        request = client.build_request("POST", path.lstrip("/"), content=body, headers=headers)
        try:
            return await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            # The exception's text names the URL, never the headers: safe to pass on. ``sent``: whether the
            # provider may have received the request (and done the work); only a failure to connect says not.
            sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            raise UpstreamFailed(
                f"provider {provider} could not be reached: {type(exc).__name__}: {exc}", sent=sent
            ) from None

    def scrub(self, provider: str, status: int, body: bytes) -> str:
        """What of a provider's error answer may reach the sandbox: nothing of an authentication failure (providers
        echo parts of the key), never the credential, at most 300 characters."""
        if status in (401, 403):
            return "the provider refused the host's credential for it (an operator must check it)"
        text = body[:2000].decode("utf-8", "replace")
        cached = self._credentials.get(provider)
        if cached is not None and cached[1]:
            text = text.replace(cached[1], "[credential]")
        return text[:300]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
