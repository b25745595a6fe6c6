"""Erasure leaves no plaintext on disk: the real service, forget + crypto-shred, then every file is searched.

The audit service's erasure destroys the aggregate's data key (``DataKeys.destroy``) between its two audit
events; here the service's own ``DataKeys`` does that step, since the context service's tests do not run the
audit service.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from symbi_cli.credentials import auth_headers
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.settings import load_settings

from .conftest import service_env

SECRET = "Quokkaventure7731 keeps the vault code under the blue teapot"
TAG = "tagsecret-zebrafinch"
META = "metasecret-okapi"
TITLE = "Titlesecret Narwhalbook"
NEEDLES = [s.encode() for s in ("Quokkaventure7731", "blue teapot", TAG, META, "Narwhalbook", "Pangolinfacts")]


def files_under(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def traces(root: Path) -> list[tuple[str, str]]:
    """Every (file, needle) where a needle occurs in a file under ``root`` (binary-safe, case-insensitive)."""
    found = []
    for path in files_under(root):
        data = path.read_bytes().lower()
        found += [(str(path), n.decode()) for n in NEEDLES if n.lower() in data]
    return found


@pytest.mark.parametrize("backend", ["embedded", "lancedb"])
async def test_no_plaintext_on_disk_after_forget_and_erasure(
    backend: str, nats_url: str, keys_dir: Path, tmp_path: Path, start: Any
) -> None:
    vectors = tmp_path / "vectors"
    settings = load_settings(env=service_env(nats_url, keys_dir, vectors, SYMBIONT_VECTOR_BACKEND=backend))
    async for running in start(settings):
        stored = await running.post(
            "/v1/memories",
            {
                "agent_id": "ada",
                "memories": [{"text": SECRET, "kind": "long_term", "tags": [TAG], "metadata": {"topic": META}}],
            },
            201,
        )
        doc = await running.post(
            "/v1/knowledge/adakb/documents",
            {"agent_id": "ada", "title": TITLE, "text": "Pangolinfacts: pangolins roll into a ball when threatened."},
            201,
        )
        await running.post("/v1/memories", {"agent_id": "bob", "memories": [{"text": "Bob likes tea."}]}, 201)
        assert await running.index.wait_for(max(stored["sequence"], doc["sequence"]) + 1)
        # Served in full, filterable by tag and metadata, while the content on disk is sealed.
        query = {"agent_id": "ada", "query": "where is the vault code", "tags": [TAG], "metadata": {"topic": META}}
        results = (await running.post("/v1/memories/query", query))["results"]
        assert [r["text"] for r in results] == [SECRET]
        assert results[0]["tags"] == [TAG]
        assert results[0]["metadata"] == {"topic": META}
        wrong = {**query, "metadata": {"topic": "other"}}
        assert (await running.post("/v1/memories/query", wrong))["results"] == []
        kb = {"agent_id": "ada", "query": "pangolins", "knowledge_bases": ["adakb"]}
        assert (await running.post("/v1/knowledge/search", kb))["results"][0]["title"] == TITLE
        await running.index.store.optimize()
        assert traces(vectors) == []

        forgotten = await running.post("/v1/memories/forget", {"agent_id": "ada", "ids": stored["ids"]})
        assert await running.index.wait_for(forgotten["sequence"])
        datakeys = running.app.state.runtime.datakeys
        for aggregate in ("memory.ada", "knowledge.adakb"):
            await datakeys.destroy(aggregate)
        for _ in range(200):
            if running.index.shredded >= 2:
                break
            await asyncio.sleep(0.05)
        assert running.index.shredded >= 2
        assert (await running.post("/v1/knowledge/search", kb))["results"] == []
    # The service stopped; nothing under the test's whole runtime directory (vector store, JetStream store,
    # keys, logs) holds the text, the tag, the metadata value or the title.
    assert traces(tmp_path) == []
    # The vector store is private to the service's user.
    assert stat.S_IMODE(vectors.stat().st_mode) == 0o700
    for path in [vectors, *files_under(vectors)]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


DPO_POLICY = """
permit(principal == User::"dpo", action == Action::"data.write", resource is Data)
when { context has purpose && context.purpose == "erasure" };
"""


async def test_a_whole_runtime_keeps_no_plaintext_after_forget_and_audited_erasure(
    runtime_options: RuntimeOptions, runtime_home: Path
) -> None:
    """``symbi up``'s runtime (every service, nats-server, PostgreSQL): store, forget, erase through the audit
    service's API, stop, then no file under the runtime's home holds the text."""
    rt = LocalRuntime(runtime_options)
    try:
        await rt.start()
        await rt.wait_ready(timeout=60)
        context, audit = rt.url_of("context"), rt.url_of("audit")
        async with httpx.AsyncClient(timeout=30, headers=auth_headers(runtime_home)) as http:
            body = {"agent_id": "ada", "memories": [{"text": SECRET, "tags": [TAG], "metadata": {"topic": META}}]}
            r = await http.post(f"{context}/v1/memories", json=body)
            assert r.status_code == 201, r.text
            stored = r.json()
            query = {"agent_id": "ada", "query": "vault code", "min_sequence": stored["sequence"]}
            r = await http.post(f"{context}/v1/memories/query", json=query)
            assert [h["text"] for h in r.json()["results"]] == [SECRET]
            r = await http.post(f"{context}/v1/memories/forget", json={"agent_id": "ada", "ids": stored["ids"]})
            assert r.status_code == 200, r.text
            # The data protection officer may erase (the baseline policy lets no one).
            r = await http.post(f"{rt.url_of('policy')}/v1/policy-sets", json={"set_id": "dpo", "cedar": DPO_POLICY})
            assert r.status_code == 201, r.text
            for _ in range(100):
                r = await http.post(
                    f"{audit}/v1/audit/erasures",
                    json={"aggregate": "memory.ada", "reason": "erasure request"},
                    headers={"X-Symbi-Principal": "dpo"},
                )
                if r.status_code != 403:  # until the audit service's decision point has the new policy set
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 201, r.text
            r = await http.post(f"{context}/v1/memories/query", json={**query, "min_sequence": 0})
            assert r.json()["results"] == []
    finally:
        await rt.stop()
    assert traces(runtime_home) == []
