"""Streaming a chat completion from the model gateway over HTTP: ``http://models.symbi.internal/v1`` through the
sandbox's proxy (``$HTTP_PROXY``), the way any OpenAI client reaches it. Stdlib only.

The protocol channel answers each request once, so a stream cannot travel over it; the egress proxy answers the
reserved name ``models.symbi.internal`` itself and hands the request to the host's gateway, which knows the
caller from the sandbox's socket (no key is needed or sent).
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from symbi_agent.errors import ChannelError, SymbiAgentError, from_reply

MODELS_HOST = "models.symbi.internal"
CHAT_URL = f"http://{MODELS_HOST}/v1/chat/completions"


def _proxy() -> tuple[str, int] | None:
    raw = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    if not raw:
        return None
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    return parts.hostname or "127.0.0.1", parts.port or 80


def _error(status: int, data: bytes) -> SymbiAgentError:
    try:
        error = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        return ChannelError(f"the model gateway answered HTTP {status}: {data[:200]!r}")
    details = {k: v for k, v in error.items() if k not in ("code", "message", "type")}
    return from_reply({"code": error.get("code", "internal"), "message": error.get("message", ""), "details": details})


def stream_chat(body: dict[str, Any], *, timeout: float = 120.0) -> Iterator[dict[str, Any]]:
    """POST ``body`` with ``stream: true`` and yield each server-sent event's JSON (OpenAI chunks, the last one
    with ``usage``); a refusal is raised as its typed error (:class:`~symbi_agent.errors.BudgetExceeded` …)."""
    proxy = _proxy()
    host, port = proxy if proxy is not None else (MODELS_HOST, 80)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps({**body, "stream": True}).encode()
        headers = {"Host": MODELS_HOST, "Content-Type": "application/json", "Accept": "text/event-stream"}
        try:
            conn.request("POST", CHAT_URL if proxy is not None else "/v1/chat/completions", payload, headers)
            response = conn.getresponse()
        except OSError as exc:
            where = f"the proxy {host}:{port}" if proxy is not None else MODELS_HOST
            raise ChannelError(f"cannot reach the model gateway through {where}: {exc}") from None
        if response.status != 200:
            raise _error(response.status, response.read())
        while True:
            line = response.readline()
            if not line:
                return
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield json.loads(data)
    finally:
        conn.close()
