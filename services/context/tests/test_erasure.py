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

import pytest
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
