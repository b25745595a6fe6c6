"""The live event stream (``GET /v1/audit/stream``) ends once its operator token is revoked or expires.

The token is checked when the stream opens (the guard), and again before each event is sent, at the token's
expiry and every ``STREAM_RECHECK_S`` while nothing comes: a revoked or expired token receives no later event.
The revocation takes the real path: a signed entry in the ``OPERATOR_REVOCATIONS`` bucket, which the
service's guard follows.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from symbi_audit import live_api
from symbi_common.crypto import Signer
from symbi_common.operator_revocations import open_revocations_bucket
from symbi_common.operator_tokens import (
    bearer_header,
    default_operator_dir,
    encode_revocation,
    issue_token,
    load_issuer_key,
    sign_revocation,
)

from .conftest import Running, Writer


@pytest.fixture
def issuer(keys_dir: Path) -> Signer:
    return load_issuer_key(default_operator_dir(keys_dir))


@dataclass
class Listener:
    """One client of the stream: the audit events it received, and how the stream ended."""

    url: str
    token: str
    items: list[dict[str, Any]] = field(default_factory=list)
    named: list[str] = field(default_factory=list)  # the ``event:`` names, in order
    ended: asyncio.Task[None] | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), headers=bearer_header(self.token)) as client,
            client.stream("GET", f"{self.url}/v1/audit/stream", params={"agent": "watched"}) as resp,
        ):
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith(":"):
                    self.opened.set()
                elif line.startswith("event: "):
                    self.named.append(line[7:])
                elif line.startswith("data: ") and self.named[-1] == "audit":
                    self.items.append(json.loads(line[6:]))

    async def start(self) -> Listener:
        self.ended = asyncio.create_task(self._run())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def wait_items(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            assert time.monotonic() < deadline, f"only {len(self.items)} of {count} events arrived"
            await asyncio.sleep(0.02)

    async def wait_end(self, timeout: float) -> None:
        assert self.ended is not None
        done, _ = await asyncio.wait({self.ended}, timeout=timeout)
        if not done:
            self.ended.cancel()
            raise AssertionError(f"the stream was still open after {timeout} s (events so far: {self.named})")
        self.ended.result()

    def stop(self) -> None:
        if self.ended is not None and not self.ended.done():
            self.ended.cancel()


async def _revoke(provisioned: NatsClient, running: Running, issuer: Signer, token_id: str) -> None:
    """``symbi token revoke``'s write, then until the service's guard holds it."""
    kv = await open_revocations_bucket(provisioned.jetstream())
    await kv.put(token_id, encode_revocation(sign_revocation(issuer, token_id, reason="left the team")))
    revoked = running.app.state.operator_guard.revocations.revoked
    for _ in range(250):
        if token_id in revoked:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the service never learnt that {token_id} was revoked")


async def test_a_revoked_token_gets_no_later_event_and_its_stream_ends(
    served: tuple[str, Running],
    writer: Writer,
    provisioned: NatsClient,
    issuer: Signer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked before each event sent: the first event after the revocation ends the stream, undelivered; a
    stream of another (unrevoked) token gets that event."""
    monkeypatch.setattr(live_api, "STREAM_RECHECK_S", 3600.0, raising=False)  # only the next event can end it here
    url, running = served
    token, claims = issue_token(issuer, name="ada", role="auditor", ttl_s=3600)
    other, _ = issue_token(issuer, name="bob", role="auditor", ttl_s=3600)
    revoked, kept = await Listener(url, token).start(), await Listener(url, other).start()
    try:
        await running.wait_for((await writer.agent("watched"))[-1])
        await revoked.wait_items(1)
        await kept.wait_items(1)

        await _revoke(provisioned, running, issuer, claims.tid)
        later = (await writer.agent("watched"))[-1]
        await running.wait_for(later)
        await kept.wait_items(2)
        assert kept.items[-1]["sequence"] == later
        await revoked.wait_end(5)
        assert [e["aggregate_version"] for e in revoked.items] == [1], revoked.items
        assert revoked.named == ["audit", "unauthenticated"]
        # And a new stream with it is refused at once.
        again = await running.http.get("/v1/audit/stream", headers=bearer_header(token))
        assert again.status_code == 401, again.text
    finally:
        revoked.stop()
        kept.stop()


async def test_an_idle_stream_ends_soon_after_its_token_is_revoked(
    served: tuple[str, Running],
    writer: Writer,
    provisioned: NatsClient,
    issuer: Signer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no event coming, the periodic check (every ``STREAM_RECHECK_S``) ends it."""
    monkeypatch.setattr(live_api, "STREAM_RECHECK_S", 0.2, raising=False)
    url, running = served
    token, claims = issue_token(issuer, name="ada", role="operator", ttl_s=3600)
    listener = await Listener(url, token).start()
    try:
        await _revoke(provisioned, running, issuer, claims.tid)
        await listener.wait_end(3)
        assert listener.named == ["unauthenticated"]
        later = (await writer.agent("watched"))[-1]
        await running.wait_for(later)
        assert listener.items == []
    finally:
        listener.stop()


async def test_a_token_that_expires_during_the_stream_ends_it(
    served: tuple[str, Running], writer: Writer, issuer: Signer
) -> None:
    """A short-lived token: events while it is valid, none after its expiry, and the stream ends at it (no
    event needed to notice)."""
    now = int(time.time())
    token, claims = issue_token(issuer, name="ada", role="auditor", ttl_s=60, now=now - 57)  # 2-3 s left
    url, running = served
    listener = await Listener(url, token).start()
    try:
        await running.wait_for((await writer.agent("watched"))[-1])
        await listener.wait_items(1)
        await listener.wait_end(claims.exp - time.time() + 2)
        assert time.time() >= claims.exp
        assert listener.named == ["audit", "unauthenticated"]
        later = (await writer.agent("watched"))[-1]
        await running.wait_for(later)
        assert [e["aggregate_version"] for e in listener.items] == [1]
    finally:
        listener.stop()
