"""Entry point: ``symbi-context [--config PATH]`` (or ``python -m symbi_context``).

Settings: the ``[context]`` section (``SYMBIONT_VECTOR_BACKEND``, ``SYMBIONT_VECTOR_DATA_PATH``,
``SYMBIONT_VECTOR_HOST`` / ``PORT``, ``SYMBI_CONTEXT__*``), plus NATS, keys and policy like every service. The
context service needs no PostgreSQL: its read model is the vector index.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import structlog
from fastapi import FastAPI
from symbi_common.datakeys import KvDataKeyStore
from symbi_common.service import ServiceRuntime
from symbi_common.service_app import create_app, run_service
from symbi_common.settings import Settings
from symbi_common.settings_checks import parse_size
from symbi_common.settings_sections import ContextSettings

from symbi_context.api import Api, register_commands, router
from symbi_context.application import ContextConfig, ContextService
from symbi_context.cache import CachedEmbedder
from symbi_context.domain import KNOWLEDGE, MEMORY
from symbi_context.embeddings import Embedder, LocalEmbedder, openai_from_env
from symbi_context.index import ContextIndex
from symbi_context.point_ids import INDEX_LAYOUT
from symbi_context.rag import RagEngine
from symbi_context.vectors.edge import EdgeVectorStore
from symbi_context.vectors.files import private_dir
from symbi_context.vectors.port import VectorStore
from symbi_context.vectors.sealed import SealedVectorStore

SERVICE = "context"
log = structlog.get_logger(__name__)


def make_embedder(cs: ContextSettings) -> Embedder:
    """The configured provider behind the in-memory embedding cache of ``context_cache_size``."""
    inner: Embedder
    if cs.embedding_provider == "openai":
        inner = openai_from_env(base_url=cs.openai_base_url, model=cs.embedding_model, dimension=cs.embedding_dimension)
    else:
        inner = LocalEmbedder()
    return CachedEmbedder(inner, parse_size(cs.context_cache_size, setting="context.context_cache_size"))


async def open_vector_store(cs: ContextSettings, dimension: int) -> VectorStore:
    """The configured backend. Embedded ones live under ``vector_data_path``, made private (0700) first.

    The Qdrant and LanceDB clients are imported only when configured: together they take seconds of CPU to
    import, which every start of the service (the default backend is the embedded one) would otherwise pay."""
    if cs.vector_backend == "qdrant":
        from symbi_context.vectors.qdrant import QdrantVectorStore

        return await QdrantVectorStore.connect(
            host=cs.qdrant.host,
            port=cs.qdrant.port,
            dimension=dimension,
            quantization=cs.vector_quantization,
            collection=f"symbi_context_l{INDEX_LAYOUT}",
        )
    # (each layout in a store of its own: an index of an older layout is rebuilt from the stream, not reused)
    path = private_dir(Path(cs.vector_data_path)) / f"{dimension}d-l{INDEX_LAYOUT}"
    if cs.vector_backend == "lancedb":
        from symbi_context.vectors.lance import LanceVectorStore

        return await asyncio.to_thread(LanceVectorStore, path, dimension, quantization=cs.vector_quantization)
    return EdgeVectorStore(path, dimension, quantization=cs.vector_quantization)


def build_app(settings: Settings) -> FastAPI:
    """The context service's app; its lifespan connects, follows the stream into the index and serves."""
    runtime = ServiceRuntime(SERVICE, settings, use_database=False)
    cs = settings.context

    async def on_start(rt: ServiceRuntime) -> None:
        embedder = make_embedder(cs)
        # The engine keeps only ids and sealed content: erasing the owner's data key erases it on disk too.
        store = SealedVectorStore(await open_vector_store(cs, embedder.dimension), rt.datakeys)
        index = ContextIndex(rt.js, store, rt.registry, rt.datakeys, catch_up_registry=rt.keys.catch_up)
        memories = rt.repository(MEMORY)
        knowledge = rt.repository(KNOWLEDGE)
        service = ContextService(
            memories,
            knowledge,
            index,
            embedder,
            await rt.decision_point(),
            ContextConfig(
                short_term_capacity=cs.short_term_capacity,
                short_term_ttl_s=cs.short_term_ttl_s,
                knowledge_retention_days=cs.knowledge_retention_days,
                chunk_chars=cs.chunk_chars,
                chunk_overlap_chars=cs.chunk_overlap_chars,
            ),
        )
        rag = RagEngine(service, chat_model=cs.chat_model, base_url=cs.openai_base_url)
        api = Api(service, rag)
        register_commands(rt.commands, api)
        app.state.context = api
        app.state.index = index
        rt.spawn(index.run(), "context:index")
        rt.spawn(index.optimize_forever(), "context:optimize")
        rt.spawn(
            index.follow_shredding(await KvDataKeyStore.open(rt.js, replicas=settings.nats.replicas)), "context:shred"
        )
        rt.spawn(_sweep_forever(service, cs.sweep_interval_s), "context:sweep")
        rt.close_on_stop(store.close)  # after every task using it has ended (the index stores its position last)
        await asyncio.wait_for(index.ready.wait(), timeout=30)

    app = create_app(runtime, title="Symbi context", routers=[router], on_start=on_start)
    return app


async def _sweep_forever(service: ContextService, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            forgotten = await service.sweep()
            if forgotten:
                log.info("swept expired memories and knowledge", forgotten=forgotten)
        except Exception as exc:  # the next round tries again
            log.warning("sweep failed", error=str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings and serve until SIGTERM/SIGINT; what the service writes is readable by its user only."""
    os.umask(0o077)
    run_service("symbi-context", "Symbi context service", build_app, argv)
