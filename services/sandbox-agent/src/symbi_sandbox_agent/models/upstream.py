"""The providers behind the gateway: one pooled keep-alive HTTPS client each, and the credential injected per
request from the secrets store. Nothing of the sandbox's request headers is passed on (its ``Authorization``
least of all); nothing of the provider's answer but its status, content type and body comes back.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Mapping

import httpx
from symbi_common.errors import ConfigError, SymbiError
from symbi_common.secret_source import SecretNotFound, SecretSource
from symbi_common.settings_sandbox import ModelProviderSettings

from symbi_sandbox_agent.models.catalog import secret_name
from symbi_sandbox_agent.models.errors import BadCredential, ModelError, ModelUnavailable, UpstreamFailed

#: How long a credential read from the secrets store is used before it is read again (rotation).
CREDENTIAL_TTL_S = 60.0
#: What a credential may hold: printable ASCII without spaces (it is sent as ``Bearer <credential>``; anything
#: else makes the HTTP library refuse the header, quoting it, or splits the header).
_CREDENTIAL = re.compile(r"[\x21-\x7e]+")
#: What stands for a credential in text that had it.
REDACTED = "[credential]"


def redact(text: str, credential: str | None) -> str:
    """``text`` without ``credential``: as is, as Python quotes it in a ``str`` or ``bytes`` repr (how an
    exception quotes a header), and each of its pieces between characters a quoting escapes."""
    if not credential:
        return text
    forms = {credential, repr(credential)[1:-1], repr(credential.encode("utf-8", "replace"))[2:-1]}
    forms.update(p for p in re.split(r"[^\x21-\x7e]+", credential) if len(p) >= 4)
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, REDACTED)
    return text


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
            raise BadCredential(
                f"the credential of provider {provider} ({name}) is not UTF-8 text; "
                f"set it again with `symbi secrets set {name}`",
                secret=name,
                sent=False,
            ) from None
        if not _CREDENTIAL.fullmatch(value):
            # Never sent (nor quoted): an HTTP library's refusal of the header would carry the value.
            raise BadCredential(
                f"the credential of provider {provider} ({name}) is empty or holds whitespace, a control or a "
                f"non-ASCII character, which an HTTP header cannot carry; set it again with `symbi secrets set {name}`",
                secret=name,
                sent=False,
            )
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
            # ``sent``: whether the provider may have received the request (and done the work); only a failure to
            # connect says not. The exception's text may quote a header (a refused one is quoted whole): the
            # credential is taken out of it, whatever its form, before it reaches the sandbox or an event.
            sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            raise UpstreamFailed(
                redact(f"provider {provider} could not be reached: {type(exc).__name__}: {exc}", credential), sent=sent
            ) from None

    def scrub(self, provider: str, status: int, body: bytes) -> str:
        """What of a provider's error answer may reach the sandbox: nothing of an authentication failure (providers
        echo parts of the key), never the credential, at most 300 characters."""
        if status in (401, 403):
            return "the provider refused the host's credential for it (an operator must check it)"
        text = body[:2000].decode("utf-8", "replace")
        return self.redact(provider, text)[:300]

    def redact(self, provider: str, text: str) -> str:
        """``text`` without the provider's credential (as last read), in any form an exception may quote it."""
        cached = self._credentials.get(provider)
        return redact(text, cached[1] if cached is not None else None)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
