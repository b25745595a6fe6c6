"""The context service end to end over HTTP and NATS: real nats-server, real model, real embedded index."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from symbi_common.errors import PolicyDenied
from symbi_common.events import Event, EventCodec
from symbi_common.sealing import ChainTip
from symbi_context.rag import RagEngine


async def ingest_corpus(r: Any, corpus: dict[str, str], kb: str = "science") -> dict[str, str]:
    ids = {}
    last = 0
    for name, text in corpus.items():
        out = await r.post(
            f"/v1/knowledge/{kb}/documents",
            {
                "agent_id": "librarian",
                "title": name.replace("_", " "),
                "text": text,
                "media_type": "text/markdown",
                "source": f"corpus/{name}.md",
                "tags": [name],
            },
            201,
        )
        ids[name] = out["document_id"]
        last = out["sequence"]
    assert await r.index.wait_for(last)
    return ids


async def test_paraphrased_questions_find_the_right_document(
    running: Any, corpus: dict[str, str], questions: list[tuple[str, str]]
) -> None:
    ids = await ingest_corpus(running, corpus)
    for question, expected in questions:
        out = await running.post(
            "/v1/knowledge/search",
            {"agent_id": "reader", "query": question, "knowledge_bases": ["science"], "limit": 3},
        )
        top = out["results"][0]
        assert top["document_id"] == ids[expected], (question, [r["title"] for r in out["results"]])
        assert top["kind"] == "knowledge"
        assert top["source"] == f"corpus/{expected}.md"


async def test_rag_query_cites_the_source(running: Any, corpus: dict[str, str]) -> None:
    await ingest_corpus(running, corpus)
    out = await running.post(
        "/v1/rag/query",
        {
            "agent_id": "reader",
            "query": "Why do some eruptions explode while others just flow?",
            "knowledge_bases": ["science"],
            "include_memories": False,
        },
    )
    assert out["analysis"]["intent"] == "question"
    assert out["citations"][0]["title"] == "volcanoes"
    assert out["context"].startswith("[1] (volcanoes, corpus/volcanoes.md)")
    assert "silica-rich magma" in out["context"]
    assert out["answer"] is None  # no chat endpoint configured
    # Inline filters narrow the retrieval: only the sleep document carries this tag.
    tagged = await running.post(
        "/v1/rag/query",
        {"agent_id": "reader", "query": "tag:sleep what happens at night?", "knowledge_bases": ["science"]},
    )
    assert tagged["analysis"]["tags"] == ["sleep"]
    assert {c["title"] for c in tagged["citations"]} == {"sleep"}


async def test_memories_kinds_filters_and_origin(running: Any) -> None:
    stored = await running.post(
        "/v1/memories",
        {
            "agent_id": "ada",
            "memories": [
                {
                    "kind": "long_term",
                    "text": "The user prefers answers in French.",
                    "tags": ["preference"],
                    "metadata": {"topic": "language"},
                    "origin": {"message_id": "msg-1"},
                },
                {
                    "kind": "long_term",
                    "text": "The deployment uses three PostgreSQL replicas.",
                    "metadata": {"topic": "infra"},
                    "origin": {"task_id": "t-9", "tool_call_id": "call-4"},
                },
                {"kind": "working", "text": "Step 2 of the migration is running.", "origin": {"task_id": "t-9"}},
                {"kind": "short_term", "text": "The user just said hello."},
            ],
        },
        201,
    )
    assert len(stored["ids"]) == 4
    seq = stored["sequence"]

    async def query(**body: Any) -> list[dict[str, Any]]:
        out = await running.post("/v1/memories/query", {"agent_id": "ada", "min_sequence": seq, **body})
        results: list[dict[str, Any]] = out["results"]
        return results

    top = (await query(query="Which language should replies be written in?"))[0]
    assert top["text"] == "The user prefers answers in French."
    assert top["origin"] == {"message_id": "msg-1"}
    assert top["owner"] == "ada"
    infra = await query(query="database", metadata={"topic": "infra"})
    assert [r["text"] for r in infra] == ["The deployment uses three PostgreSQL replicas."]
    assert infra[0]["origin"] == {"task_id": "t-9", "tool_call_id": "call-4"}
    assert {r["kind"] for r in await query(query="anything", kinds=["working"])} == {"working"}
    assert [r["text"] for r in await query(query="greeting", tags=["preference"])] == [
        "The user prefers answers in French."
    ]
    assert await query(query="hello", created_from=time.time() + 60) == []
    # Another agent's memories are not in its own results.
    other = await running.post("/v1/memories/query", {"agent_id": "bob", "query": "French", "min_sequence": seq})
    assert other["results"] == []


async def test_forget_by_id_and_filter(running: Any) -> None:
    out = await running.post(
        "/v1/memories",
        {
            "agent_id": "ada",
            "memories": [
                {"text": "Paris is the capital of France.", "tags": ["geo"]},
                {"text": "Berlin is the capital of Germany.", "tags": ["geo"]},
                {"text": "The meeting moved to Thursday.", "tags": ["calendar"]},
            ],
        },
        201,
    )
    paris, _, meeting = out["ids"]
    forgot = await running.post("/v1/memories/forget", {"agent_id": "ada", "ids": [paris]})
    results = await running.post(
        "/v1/memories/query", {"agent_id": "ada", "query": "capital city", "min_sequence": forgot["sequence"]}
    )
    assert paris not in {r["id"] for r in results["results"]}
    forgot = await running.post("/v1/memories/forget", {"agent_id": "ada", "where": {"tags": ["geo"]}})
    assert len(forgot["ids"]) == 1
    results = await running.post(
        "/v1/memories/query", {"agent_id": "ada", "query": "capital city", "min_sequence": forgot["sequence"]}
    )
    assert [r["id"] for r in results["results"]] == [meeting]
    missing = await running.http.post("/v1/memories/forget", json={"agent_id": "ada", "ids": [paris]})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_memory"


async def test_short_term_memories_expire_and_are_bounded(running: Any) -> None:
    api = running.api
    api.service.config = type(api.service.config)(short_term_capacity=3, short_term_ttl_s=3600)
    ids = []
    for i in range(5):
        out = await running.post(
            "/v1/memories",
            {"agent_id": "ada", "memories": [{"kind": "short_term", "text": f"Recent remark {i}."}]},
            201,
        )
        ids.extend(out["ids"])
    brief = await running.post(
        "/v1/memories",
        {"agent_id": "ada", "memories": [{"kind": "short_term", "text": "Fleeting.", "ttl_s": 2.0}]},
        201,
    )
    seq = brief["sequence"]
    live = await running.post("/v1/memories/query", {"agent_id": "ada", "query": "remark", "min_sequence": seq})
    # Capacity 3: the oldest three remarks were evicted by the writes that overflowed.
    assert {r["id"] for r in live["results"]} == {ids[3], ids[4], brief["ids"][0]}
    await asyncio.sleep(2.1)
    live = await running.post("/v1/memories/query", {"agent_id": "ada", "query": "remark"})
    assert {r["id"] for r in live["results"]} == {ids[3], ids[4]}  # expired: no longer served
    assert await api.service.sweep() == 1  # and forgotten as an event
    for _ in range(100):  # the index applies the event on its own time
        if await running.index.store.count() == 2:
            break
        await asyncio.sleep(0.05)
    assert await running.index.store.count() == 2


async def test_knowledge_retention_is_enforced(running: Any, corpus: dict[str, str]) -> None:
    ids = await ingest_corpus(running, {"tcp": corpus["tcp"]})
    query = {"agent_id": "reader", "query": "three-way handshake", "knowledge_bases": ["science"]}
    assert (await running.post("/v1/knowledge/search", query))["results"]
    service = running.api.service
    service.config = type(service.config)(knowledge_retention_days=1)
    # A day later the document is past its retention: not served, and the sweep forgets it.
    assert await service.sweep(now=time.time() + 2 * 86_400) == 1
    service.config = type(service.config)(knowledge_retention_days=365)
    for _ in range(50):
        if await running.index.store.count() == 0:
            break
        await running.index.wait_for(running.index.position + 1, timeout=0.1)
    assert (await running.post("/v1/knowledge/search", query))["results"] == []
    gone = await running.http.post(
        "/v1/knowledge/science/forget", json={"agent_id": "librarian", "document_ids": [ids["tcp"]]}
    )
    assert gone.status_code == 404


async def test_denied_reads_return_nothing_and_are_logged(
    running: Any, corpus: dict[str, str], rule_policy: Any
) -> None:
    await ingest_corpus(running, {"sleep": corpus["sleep"]}, kb="health")
    await ingest_corpus(running, {"tcp": corpus["tcp"]}, kb="networks")
    out = await running.post(
        "/v1/memories", {"agent_id": "ada", "memories": [{"text": "Ada sleeps eight hours a night."}]}, 201
    )
    await running.index.wait_for(out["sequence"])
    policy = rule_policy({"bob": {"health"}})
    running.api.service.decisions = policy
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        # Bob asks for Ada's memories and both knowledge bases: only "health" is granted.
        res = await running.post(
            "/v1/memories/query",
            {
                "agent_id": "bob",
                "query": "how many hours of sleep",
                "owners": ["ada"],
                "knowledge_bases": ["health", "networks"],
            },
        )
        assert {r["owner"] for r in res["results"]} == {"health"}
        denied = await running.post(
            "/v1/knowledge/search", {"agent_id": "bob", "query": "handshake", "knowledge_bases": ["networks"]}
        )
        assert denied["results"] == []
    denials = [e for e in logs if e["event"] == "memory read denied"]
    assert {(e["principal"], e["resource"]) for e in denials} == {("Agent::bob", "ada"), ("Agent::bob", "networks")}
    agents_asked = [r for r in policy.asked if r.principal.type == "Agent"]
    assert all(r.action == "memory.read" and r.principal.uid == 'Agent::"bob"' for r in agents_asked)
    operators_asked = [r for r in policy.asked if r.principal.type == "User"]  # over HTTP: the operator too
    assert {r.resource.id for r in operators_asked} == {"health"}  # only where the agent was allowed
    parents = {r.resource.id: r.resource.parents for r in agents_asked}
    assert parents == {"ada": ('Agent::"ada"',), "health": (), "networks": ()}
    # Writes to another agent's memory are refused with a typed error.
    with pytest.raises(PolicyDenied):
        await running.api.service.forget_memories("bob", owner="ada", ids=out["ids"])
    refused = await running.http.post(
        "/v1/memories", json={"agent_id": "bob", "owner": "ada", "memories": [{"text": "x"}]}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "policy_denied"


class TaskCompleted(Event, frozen=True, kw_only=True, tag="task.completed"):
    outcome: str


async def test_working_memory_is_cleared_when_its_task_completes(running: Any, make_store: Any) -> None:
    out = await running.post(
        "/v1/memories",
        {
            "agent_id": "ada",
            "memories": [
                {"kind": "working", "text": "Scratch: row 40 of the import failed.", "origin": {"task_id": "task-1"}},
                {"kind": "working", "text": "Scratch: other task state.", "origin": {"task_id": "task-2"}},
                {"kind": "long_term", "text": "Imports fail on malformed rows.", "origin": {"task_id": "task-1"}},
            ],
        },
        201,
    )
    scheduler = await make_store("scheduler")
    codec = EventCodec([TaskCompleted])
    recs = await scheduler.append("task", "task-1", [TaskCompleted(outcome="succeeded")], codec, expected=ChainTip())
    assert await running.index.wait_for(recs[0].sequence)
    left = await running.post("/v1/memories/query", {"agent_id": "ada", "query": "import row failed"})
    texts = {r["text"] for r in left["results"]}
    assert texts == {"Scratch: other task state.", "Imports fail on malformed rows."}
    assert out["sequence"] < recs[0].sequence


async def test_bad_input_gets_typed_errors(running: Any) -> None:
    cases = [
        ("/v1/memories", {"agent_id": "ada", "memories": []}, 422, "invalid_context"),
        ("/v1/memories", {"agent_id": "ada", "memories": [{"text": "  "}]}, 422, "invalid_context"),
        ("/v1/memories", {"agent_id": "ada", "memories": [{"kind": "weird", "text": "x"}]}, 400, "bad_request"),
        ("/v1/memories", {"agent_id": "ada", "memories": [{"kind": "working", "text": "x"}]}, 422, "invalid_context"),
        ("/v1/memories", {"agent_id": "a/b", "memories": [{"text": "x"}]}, 422, "invalid_context"),
        ("/v1/memories/query", {"agent_id": "ada", "query": ""}, 422, "invalid_context"),
        ("/v1/memories/query", {"agent_id": "ada", "query": "x", "limit": 0}, 422, "invalid_context"),
        ("/v1/memories/forget", {"agent_id": "ada"}, 422, "invalid_context"),
        ("/v1/knowledge/kb/documents", {"agent_id": "ada", "title": "t"}, 422, "invalid_context"),
        (
            "/v1/knowledge/kb/documents",
            {"agent_id": "ada", "title": "t", "text": "x", "media_type": "image/png"},
            422,
            "invalid_context",
        ),
        (
            "/v1/knowledge/kb/documents",
            {"agent_id": "ada", "title": "t", "content": "bm90IGEgcGRm", "media_type": "application/pdf"},
            422,
            "invalid_context",
        ),
        ("/v1/rag/query", {"agent_id": "ada", "query": "kind:nonsense hello"}, 422, "invalid_context"),
        # Letters beyond ASCII are not ids: NATS subjects and key names refuse them.
        ("/v1/knowledge/k\u00ba/documents", {"agent_id": "ada", "title": "t", "text": "x"}, 422, "invalid_context"),
        (
            "/v1/memories",
            {"agent_id": "ada", "memories": [{"text": "x", "metadata": {"n": 2**64}}]},
            400,
            "bad_request",
        ),
    ]
    for path, body, status, code in cases:
        response = await running.http.post(path, json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body


async def test_nats_commands(running: Any, rule_policy: Any) -> None:
    stored = await running.client.call(
        "context",
        "store",
        {"agent_id": "ada", "memories": [{"text": "The office wifi password rotates monthly."}]},
        dict,
    )
    found = await running.client.call(
        "context",
        "retrieve",
        {"agent_id": "ada", "query": "how often does the network password change", "min_sequence": stored["sequence"]},
        dict,
    )
    assert found["results"][0]["id"] == stored["ids"][0]
    doc = await running.client.call(
        "context",
        "ingest",
        {"agent_id": "ada", "kb_id": "handbook", "title": "Wifi", "text": "Guests use the lobby network."},
        dict,
    )
    rag = await running.client.call(
        "context",
        "rag_query",
        {
            "agent_id": "ada",
            "query": "Where do visitors connect?",
            "knowledge_bases": ["handbook"],
            "min_sequence": doc["sequence"],
            "include_memories": False,
        },
        dict,
    )
    running.api.service.decisions = rule_policy({})
    with pytest.raises(PolicyDenied):
        await running.client.call(
            "context", "store", {"agent_id": "bob", "owner": "ada", "memories": [{"text": "x"}]}, dict
        )
    assert rag["citations"][0]["document_id"] == doc["document_id"]


async def test_crypto_shredding_erases_an_agents_memories(running: Any) -> None:
    out = await running.post(
        "/v1/memories", {"agent_id": "ada", "memories": [{"text": "Ada's bank PIN hint is her cat's birthday."}]}, 201
    )
    await running.post("/v1/memories", {"agent_id": "bob", "memories": [{"text": "Bob's cat is called Pixel."}]}, 201)
    query = {"agent_id": "ada", "query": "cat birthday", "min_sequence": out["sequence"]}
    assert (await running.post("/v1/memories/query", query))["results"]
    await running.app.state.runtime.datakeys.destroy("memory.ada")
    for _ in range(100):
        if running.index.shredded:
            break
        await asyncio.sleep(0.05)
    assert (await running.post("/v1/memories/query", query))["results"] == []
    assert await running.index.store.count() == 1  # Bob's memory stays


async def test_pdf_ingest_and_generated_answer(running: Any, make_pdf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = make_pdf(["Expense policy.", "Hotel costs above 180 euros a night need approval from finance."])
    out = await running.post(
        "/v1/knowledge/policies/documents",
        {
            "agent_id": "hr",
            "title": "Expenses",
            "content": base64.b64encode(pdf).decode(),
            "media_type": "application/pdf",
            "source": "expenses.pdf",
        },
        201,
    )
    chat = FastAPI()
    asked: list[dict[str, Any]] = []

    @chat.post("/v1/chat/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        asked.append(body)
        context = body["messages"][1]["content"]
        cited = "[1]" if "180 euros" in context else "(no context)"
        return {
            "choices": [{"message": {"role": "assistant", "content": f"Above 180 euros you need approval {cited}."}}]
        }

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    engine = RagEngine(
        running.api.service, chat_model="gpt-test", base_url="http://chat/v1", transport=httpx.ASGITransport(app=chat)
    )
    answer = await engine.query(
        "hr",
        "How expensive may a hotel room be without sign-off?",
        knowledge_bases=("policies",),
        include_memories=False,
        min_sequence=out["sequence"],
    )
    assert answer.citations[0].source == "expenses.pdf"
    assert "180 euros" in answer.context
    assert answer.answer == "Above 180 euros you need approval [1]."
    assert asked[0]["model"] == "gpt-test"
    assert asked[0]["temperature"] == 0


async def test_writes_record_the_decision_that_allowed_them(running: Any) -> None:
    from symbi_context.domain import MEMORY, MemoryStored

    await running.post("/v1/memories", {"agent_id": "ada", "memories": [{"text": "Remember the milk."}]}, 201)
    records = await running.app.state.runtime.store.load("memory", "ada", MEMORY.codec)
    event = records[0].event
    assert isinstance(event, MemoryStored)
    assert event.decision is not None
    assert (event.decision.action, event.decision.effect) == ("memory.write", "allow")
    assert event.decision.policies == ("enforcement-disabled",)
    assert records[0].header.producer == "context"
