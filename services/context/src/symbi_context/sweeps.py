"""Forgetting on a schedule: memories past their expiry and knowledge past its retention, as events, a page of
the index at a time (:meth:`~symbi_context.application.ContextService.sweep`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from symbi_context.domain import KNOWLEDGE_KIND, MEMORY_KINDS, Forget, KnowledgeForgotten, MemoryForgotten
from symbi_context.point_ids import item_id
from symbi_context.vectors.port import Hit, MetaFilter

if TYPE_CHECKING:
    from symbi_context.application import ContextService

log = structlog.get_logger(__name__)


async def sweep(service: ContextService, now: float) -> int:
    """Forget the memories expired at ``now`` and knowledge past its retention. Returns how many.

    Every memory with an expiry is swept, whatever its kind: short-term ones always have one, long-term and
    working ones when they were stored with ``ttl_s``."""
    expired = MetaFilter(kinds=MEMORY_KINDS, expired_by=now)
    done = await _sweep(service, expired, lambda hits: _forget_expired(service, hits, now))
    oldest = now - service.config.knowledge_retention_days * 86_400
    old = MetaFilter(kinds=(KNOWLEDGE_KIND,), created_to=oldest)
    return done + await _sweep(service, old, lambda hits: _forget_retained(service, hits))


async def _sweep(
    service: ContextService, where: MetaFilter, forget: Callable[[list[Hit]], Awaitable[tuple[int, int]]]
) -> int:
    """Forget what ``where`` matches in the index, a page (``sweep_page`` points) at a time; how many.

    ``forget`` forgets a page's entries and answers how many and the sequence of its last append. After a
    full page the sweep waits for the index to apply those forgets, so the next page holds what is left. It
    stops at a short page, at a page that forgot nothing (what is left is not the aggregates' to forget,
    e.g. stored again while the index lagged) and when the index does not catch up in time: the next sweep
    goes on from there."""
    page = service.config.sweep_page
    done = 0
    while True:
        hits = await service.store.scroll(where, limit=page)
        forgotten, sequence = await forget(hits)
        done += forgotten
        if len(hits) < page or not forgotten:
            return done
        if not await service.index.wait_for(sequence, service.config.index_wait_s):
            log.warning(
                "sweep stops: the index is behind its forgets", position=service.index.position, wanted=sequence
            )
            return done


async def _forget_expired(service: ContextService, hits: list[Hit], now: float) -> tuple[int, int]:
    """Forget the memories of ``hits`` whose owner's aggregate has them expired by ``now`` too (the index may
    lag: a memory forgotten and stored again since is live). How many, and the last append's sequence."""
    by_owner: dict[str, list[str]] = {}
    for hit in hits:
        by_owner.setdefault(str(hit.payload["owner"]), []).append(item_id(hit))
    done = last = 0
    for owner, ids in by_owner.items():
        command = Forget(ids=tuple(ids), reason="expired", missing_ok=True, expired_by=now)
        _, records = await service.memories.execute(owner, command)
        for r in records:
            done += len(r.event.memory_ids) if isinstance(r.event, MemoryForgotten) else 0
            last = r.sequence
    return done, last


async def _forget_retained(service: ContextService, hits: list[Hit]) -> tuple[int, int]:
    """Forget the documents of the chunks ``hits`` (past their retention). How many, and the last append's
    sequence."""
    docs: dict[str, set[str]] = {}
    for hit in hits:
        docs.setdefault(str(hit.payload["owner"]), set()).add(str(hit.payload["document_id"]))
    done = last = 0
    for kb, doc_ids in docs.items():
        command = Forget(ids=tuple(sorted(doc_ids)), reason="retention", missing_ok=True)
        _, records = await service.knowledge.execute(kb, command)
        for r in records:
            done += len(r.event.document_ids) if isinstance(r.event, KnowledgeForgotten) else 0
            last = r.sequence
    return done, last
