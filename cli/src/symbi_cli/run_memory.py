"""``symbi run``'s memory step: the task's output kept as a long-term memory of the agent, the task as its origin."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx

from symbi_cli.run_services import ServiceUrls, json_body, request

#: Names the result memory of a task, so storing it again (a retry) does not store it twice.
_RESULT_NAMESPACE = uuid.UUID("0f4e5c2a-7b1d-4e8f-9a36-2c5d8e1b7a40")

#: The longest result kept whole as a memory; a longer one is kept as its beginning, with a note and its digest.
MEMORY_MAX_CHARS = 16_000


def result_memory(result: str) -> tuple[str, dict[str, Any]] | None:
    """The memory text and metadata for a task's output; None for an output with nothing in it."""
    if not result.strip():
        return None
    if len(result) <= MEMORY_MAX_CHARS:
        return result, {}
    digest = hashlib.sha256(result.encode()).hexdigest()
    note = f"\n[… truncated: the first {{kept}} of {len(result)} characters; sha256 of the whole result {digest}]"
    kept = MEMORY_MAX_CHARS - len(note.format(kept=MEMORY_MAX_CHARS))
    text = result[:kept] + note.format(kept=kept)
    return text, {"truncated": True, "result_chars": len(result), "result_sha256": digest}


def result_memory_id(agent_id: str, task_id: str) -> str:
    """The id of a task's result memory: the same for every attempt to store it."""
    return str(uuid.uuid5(_RESULT_NAMESPACE, f"{agent_id}/{task_id}/result"))


async def store_memory(
    http: httpx.AsyncClient, urls: ServiceUrls, agent_id: str, task_id: str, text: str
) -> dict[str, Any]:
    """Keep what the agent produced as its long-term memory, with the task as origin.

    An empty output is not stored (there is nothing to remember; ``skipped`` says so); a long one is stored
    as its beginning with a note and the SHA-256 of the whole output (``truncated``).
    """
    memory = result_memory(text)
    if memory is None:
        return {"skipped": "the task printed nothing; no memory stored"}
    kept, metadata = memory
    item: dict[str, Any] = {
        "id": result_memory_id(agent_id, task_id),
        "kind": "long_term",
        "text": kept,
        "tags": ["task-result"],
        "origin": {"task_id": task_id},
    }
    if metadata:
        item["metadata"] = metadata
    body = {"agent_id": agent_id, "memories": [item]}
    stored = json_body(await request(http, "POST", f"{urls.context}/v1/memories", json=body), "storing the memory")
    if metadata:
        stored["truncated"] = {"kept_chars": len(kept), "result_chars": metadata["result_chars"]}
    return stored
