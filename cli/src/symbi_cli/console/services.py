"""The console's only way to the runtime: the services' public HTTP APIs, with the operator's token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from symbi_common.errors import SymbiError
from symbi_common.operator_tokens import bearer_header

from symbi_cli.service_http import service_urls

#: Re-exported: each service's URL (``symbi up``'s state file, else the home's scheme on loopback).
__all__ = ["ServiceCallFailed", "Services", "service_urls"]


class ServiceCallFailed(SymbiError):
    """A service refused or could not be reached; ``status`` is its HTTP status (0: unreachable)."""

    code = "service_call_failed"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{error.get('message')} ({error.get('code')})"
    except (ValueError, AttributeError):
        return response.text[:300]


@dataclass
class Services:
    """Calls on behalf of one operator: every request carries that operator's token, nothing else."""

    urls: dict[str, str]
    token: str
    http: httpx.AsyncClient

    def _url(self, service: str, path: str) -> str:
        return self.urls[service] + path

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self._url(service, path)
        headers = {**bearer_header(self.token), **kwargs.pop("headers", {})}
        try:
            response = await self.http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceCallFailed(f"cannot reach {service} at {url} ({exc})", status=0) from exc
        if response.status_code >= 400:
            raise ServiceCallFailed(
                f"{service} refused {method} {path}: {_message(response)}", status=response.status_code
            )
        return response

    async def get(self, service: str, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        return (await self.call(service, "GET", path, params=clean)).json()

    async def post(self, service: str, path: str, body: Any, **kwargs: Any) -> Any:
        return (await self.call(service, "POST", path, json=body, **kwargs)).json()

    async def stream_lines(self, service: str, path: str, **params: Any) -> AsyncIterator[bytes]:
        """The raw lines of a streaming response (the audit service's Server-Sent Events)."""
        clean = {k: v for k, v in params.items() if v not in (None, "")}
        url = self._url(service, path)
        async with self.http.stream(
            "GET", url, params=clean, headers=bearer_header(self.token), timeout=httpx.Timeout(10.0, read=None)
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ServiceCallFailed(
                    f"{service} refused GET {path}: {_message(response)}", status=response.status_code
                )
            async for line in response.aiter_lines():
                yield line.encode()
