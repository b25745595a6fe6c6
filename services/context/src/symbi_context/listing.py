"""``GET /v1/memories``: the memories an agent may read, newest first — no query, no ranking.

The same gate as a query: the reader (``agent_id``) asks ``memory.read`` on ``Memory::"<owner>"`` (its own
memory when no owner is named); a denied owner lists nothing and is named in ``denied``. Expired short-term
memories are not listed. Read from the vector index, which follows the memory stream.

Over HTTP the caller is an operator, not the agent: the agent's allow only makes the memories listable; their
content (text, tags, metadata) goes to the operator only where the policy also allows ``memory.read`` on the
same resource to the operator itself (``User::"<name>"`` with attribute ``roles``: its token's role). Otherwise
each item is listed with ``text`` null, no tags or metadata, and ``text_withheld`` — as the audit service
withholds event payloads (``details`` null, ``details_withheld``). The baseline policy lets no operator role
read memory content.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from symbi_common.decisions import EntityRef

from symbi_context.access import may_read
from symbi_context.application import ContextService, check_id
from symbi_context.domain import MEMORY_KINDS
from symbi_context.errors import InvalidContext
from symbi_context.point_ids import item_id
from symbi_context.vectors.port import NEVER, Hit, MetaFilter

MAX_LIMIT = 500
#: The most points read from the index to sort by time (an owner holding more lists its newest of these).
SCAN = 10_000


@dataclass(frozen=True, slots=True)
class ListedMemory:
    id: str
    kind: str
    text: str | None
    created_at: float
    expires_at: float | None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    sequence: int | None = None
    #: The content (text, tags, metadata) is withheld from the operator who asked (its ``memory.read`` denied).
    text_withheld: bool = False

    def withheld(self) -> ListedMemory:
        return replace(self, text=None, tags=[], metadata={}, text_withheld=True)

    @classmethod
    def of(cls, hit: Hit) -> ListedMemory:
        p = hit.payload
        expires = float(p.get("expires_at", 0.0))
        return cls(
            id=item_id(hit),
            kind=str(p.get("kind", "")),
            text=str(p.get("text", "")),
            created_at=float(p.get("created_at", 0.0)),
            expires_at=expires if expires < NEVER else None,
            tags=list(p.get("tags", [])),
            metadata=dict(p.get("metadata", {})),
            origin=dict(p.get("origin", {})),
            sequence=p.get("sequence"),
        )


async def list_memories(
    service: ContextService,
    agent_id: str,
    *,
    owner: str = "",
    kinds: tuple[str, ...] = (),
    limit: int = 50,
    operator: EntityRef | None = None,
) -> dict[str, Any]:
    """``{"owner", "items": [...newest first], "total", "denied": bool, "text_withheld": bool}`` for ``agent_id``
    reading ``owner``; with ``operator`` (an HTTP caller, :func:`~symbi_context.access.operator_principal`) the content is withheld
    unless the policy also allows ``operator`` ``memory.read`` on the owner's memory."""
    check_id(agent_id, "agent_id")
    owner = owner or agent_id
    check_id(owner, "owner")
    for kind in kinds:
        if kind not in MEMORY_KINDS:
            raise InvalidContext(f"unknown kind {kind!r}; use one of {', '.join(MEMORY_KINDS)}", field="kind")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidContext(f"must be between 1 and {MAX_LIMIT}", field="limit")
    owners, _ = await service.readable(agent_id, [owner], [])
    if not owners:
        return {"owner": owner, "items": [], "total": 0, "denied": True, "text_withheld": False}
    withheld = operator is not None and not (await may_read(service.decisions, operator, [(owner, "memory")]))[0]
    where = MetaFilter(owners=(owner,), kinds=kinds or MEMORY_KINDS, alive_at=time.time())
    hits = await service.store.scroll(where, limit=SCAN)
    hits.sort(key=lambda h: (-float(h.payload.get("created_at", 0.0)), h.id))
    listed = [ListedMemory.of(h) for h in hits[:limit]]
    items = [asdict(m.withheld() if withheld else m) for m in listed]
    return {"owner": owner, "items": items, "total": len(hits), "denied": False, "text_withheld": withheld}
