"""Ingesting a document is retry-safe when the caller names it: on the real service over a real nats-server.

A retry after a lost reply stores nothing new and answers the same document; search then finds each of its
chunks once. The same id with other content is a typed ``document_conflict``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from symbi_context.domain import KNOWLEDGE_KIND, KnowledgeIngested
from symbi_context.errors import DocumentConflict
from symbi_context.point_ids import item_id
from symbi_context.vectors.port import MetaFilter

from .conftest import Running

#: Long enough for several chunks (1000 characters each by default), every one findable by its own words.
TEXT = "\n\n".join(
    f"Section {n}. The {word} rota is kept by the {word} team; " + f"the {word} desk opens at {n} o'clock. " * 12
    for n, word in enumerate(["harbour", "orchard", "quarry", "lighthouse"], start=1)
)


async def ingested(running: Running, kb: str, document_id: str) -> list[KnowledgeIngested]:
    """The ``knowledge.ingested`` events the knowledge base's stream holds for ``document_id``."""
    repo = running.api.service.knowledge
    records = await repo.store.load(repo.aggregate.aggregate_type, kb, repo.aggregate.codec)
    return [r.event for r in records if isinstance(r.event, KnowledgeIngested) and r.event.document_id == document_id]


def ingest_body(document_id: str, **change: Any) -> dict[str, Any]:
    return {
        "agent_id": "librarian",
        "kb_id": "handbook",
        "title": "Opening hours",
        "text": TEXT,
        "tags": ["rota"],
        "origin": {"task_id": "t-1"},
        "document_id": document_id,
        **change,
    }


async def test_a_retry_after_a_lost_reply_stores_one_document(running: Running) -> None:
    document_id = str(uuid.uuid4())
    body = ingest_body(document_id)
    # The first request is served but its reply goes to an inbox nobody reads: the caller is told nothing.
    nc = running.app.state.runtime.nc
    await nc.publish("cmd.context.ingest", msgspec.json.encode(body), reply=nc.new_inbox())
    for _ in range(400):
        if await ingested(running, "handbook", document_id):
            break
        await asyncio.sleep(0.05)
    first = await ingested(running, "handbook", document_id)
    assert len(first) == 1
    assert len(first[0].chunks) >= 3
    first_tip = (await running.api.service.knowledge.load("handbook", fresh=True)).tip

    # The caller asks again with the same document_id: answered as done, nothing appended.
    retried = await running.client.call("context", "ingest", body, dict)
    assert retried["document_id"] == document_id
    assert retried["sequence"] >= first_tip.sequence
    http = {k: v for k, v in body.items() if k != "kb_id"}
    again = await running.post("/v1/knowledge/handbook/documents", http, 201)  # the HTTP API answers the same
    assert again == retried
    assert len(await ingested(running, "handbook", document_id)) == 1
    assert (await running.api.service.knowledge.load("handbook", fresh=True)).tip == first_tip

    # The index holds each chunk once, and search answers each chunk at most once, all of this document.
    found = await running.post(
        "/v1/knowledge/search",
        {
            "agent_id": "reader",
            "query": "when does the desk open for the rota",
            "knowledge_bases": ["handbook"],
            "limit": 50,
            "min_sequence": retried["sequence"],
        },
    )
    results = found["results"]
    assert results
    assert len({r["id"] for r in results}) == len({r["text"] for r in results}) == len(results)
    assert {r["document_id"] for r in results} == {document_id}
    assert {r["text"] for r in results} <= {c.text for c in first[0].chunks}
    points = await running.api.service.store.scroll(MetaFilter(owners=("handbook",), kinds=(KNOWLEDGE_KIND,)))
    assert sorted(item_id(h) for h in points) == sorted(c.chunk_id for c in first[0].chunks)


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"text": TEXT.replace("harbour", "airport")}, ["text"]),
        ({"title": "Closing hours"}, ["title"]),
        ({"tags": ["other"], "metadata": {"k": 1}}, ["tags", "metadata"]),
    ],
)
async def test_the_same_id_with_other_content_is_a_conflict(
    running: Running, change: dict[str, Any], differs: list[str]
) -> None:
    document_id = str(uuid.uuid4())
    await running.client.call("context", "ingest", ingest_body(document_id), dict)
    with pytest.raises(DocumentConflict) as caught:
        await running.client.call("context", "ingest", ingest_body(document_id, **change), dict)
    assert caught.value.code == "document_conflict"
    assert caught.value.differs == differs
    assert document_id in caught.value.message
    http = {k: v for k, v in ingest_body(document_id, **change).items() if k != "kb_id"}
    error = await running.post("/v1/knowledge/handbook/documents", http, 409)
    assert error["error"]["code"] == "document_conflict"
    assert len(await ingested(running, "handbook", document_id)) == 1


async def test_a_document_id_is_checked_and_without_one_each_ingest_is_new(running: Running) -> None:
    bad = {k: v for k, v in ingest_body("not an id!").items() if k != "kb_id"}
    error = await running.post("/v1/knowledge/handbook/documents", bad, 422)
    assert "document_id" in error["error"]["message"]
    body = {k: v for k, v in ingest_body("x").items() if k != "document_id"}
    one = await running.client.call("context", "ingest", body, dict)
    two = await running.client.call("context", "ingest", body, dict)
    assert one["document_id"] != two["document_id"]  # no id: one is made up each time, as before
