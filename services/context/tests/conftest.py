"""Fixtures of the context tests: the real service app (in-process) on a real nats-server, its settings.

NATS and the keyring come from the workspace's root ``conftest.py``; the context service needs no PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from symbi_common.commands import CommandClient
from symbi_common.decisions import Allow, Decision, DecisionRequest, Deny
from symbi_common.operator_tokens import bearer_header, issue_local_token
from symbi_common.settings import Settings, load_settings
from symbi_context.api import Api
from symbi_context.index import ContextIndex
from symbi_context.main import build_app

CORPUS = Path(__file__).parent / "corpus"


def service_env(nats_url: str, keys_dir: Path, vectors: Path, **extra: str) -> dict[str, str]:
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBIONT_VECTOR_DATA_PATH": str(vectors),
    }
    env.update(extra)
    return env


def _operator_headers(app: FastAPI) -> dict[str, str]:
    """An admin operator's token header for ``app``'s keyring."""
    return bearer_header(issue_local_token(Path(app.state.runtime.settings.keys.dir)))


@pytest.fixture
def settings(nats_url: str, keys_dir: Path, tmp_path: Path) -> Settings:
    return load_settings(env=service_env(nats_url, keys_dir, tmp_path / "vectors"))


@dataclass
class Running:
    """The context service running in this test's event loop."""

    app: FastAPI
    http: httpx.AsyncClient
    api: Api
    index: ContextIndex
    client: CommandClient

    async def post(self, path: str, body: dict[str, Any], status: int = 200) -> Any:
        response = await self.http.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()


async def _running(app: FastAPI) -> AsyncIterator[Running]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://context", headers=_operator_headers(app)
        ) as http:
            rt = app.state.runtime
            yield Running(app, http, app.state.context, app.state.index, CommandClient(rt.nc, timeout=10.0))


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    async for r in _running(build_app(settings)):
        yield r


@pytest.fixture
def start() -> Callable[[Settings], AsyncIterator[Running]]:
    """``async for r in start(settings)``: another instance of the service (restart, second backend)."""
    return lambda s: _running(build_app(s))


@pytest.fixture
def corpus() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(CORPUS.glob("*.md"))}


@pytest.fixture
def questions() -> list[tuple[str, str]]:
    return [tuple(q) for q in json.loads((CORPUS / "questions.json").read_text())]


class RuleDecisionPoint:
    """Allows an agent to read its own memories and the knowledge bases listed for it; denies the rest. An
    operator (a ``User``, asking over HTTP) may read everything (test_listing_operators.py: real policies)."""

    def __init__(self, grants: dict[str, set[str]]) -> None:
        self.grants = grants
        self.asked: list[DecisionRequest] = []

    @property
    def version(self) -> int:
        return 1

    async def decide(self, request: DecisionRequest) -> Decision:
        self.asked.append(request)
        if request.principal.type == "User":
            return Allow(policies=("operators-read",), policy_version=1)
        agent, owner = request.principal.id, request.resource.id
        if owner == agent or owner in self.grants.get(agent, set()):
            return Allow(policies=("own-or-granted",), policy_version=1)
        return Deny(reason=f"{agent} has no grant on {owner}", policies=("own-or-granted",), policy_version=1)

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        return [await self.decide(r) for r in requests]


@pytest.fixture
def rule_policy() -> type[RuleDecisionPoint]:
    return RuleDecisionPoint


def minimal_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF with the given text lines (Helvetica), built byte by byte."""
    stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


@pytest.fixture
def make_pdf() -> Callable[[list[str]], bytes]:
    return minimal_pdf
