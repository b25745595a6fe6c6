"""Content in the vector store is sealed with its owner's data key, so crypto-shredding erases it on disk too.

A vector engine keeps what it is given in files it manages (write-ahead logs, payload pages, old versions):
deleting a point does not scrub those bytes. :class:`SealedVectorStore` wraps any :class:`VectorStore` so that
the engine never receives content in plaintext:

- the content fields (:data:`SEALED_FIELDS`: text, title, source, tags, metadata, origin) travel as one
  AES-256-GCM blob (``sealed``) under the owner's data key (the key that sealed the event the point came from,
  named by the payload's ``data_key_id``), bound to the point id;
- tags and metadata stay filterable through blind index terms (``tags``, ``terms``): HMAC-SHA256 of each value
  under a key derived from generation 1 of the owner's data key, so they too mean nothing once it is destroyed;
- ids, owner, kind, scope, times, model, positions and sequence stay in the clear (they say nothing of content).

Reads open the blob again; a point whose key is destroyed is not returned. A point without ``data_key_id``
is refused: nothing reaches the engine unsealed.

Not hidden: the dense vector and the keyword vector (hashed BM25 terms) of each point are what the engine
searches on; they are derived from the content, not the content itself, and the index deletes them with the
point (and purges an owner's points the moment its key is destroyed).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from symbi_common.crypto import AeadKey
from symbi_common.datakeys import DataKeys, split_key_id
from symbi_common.errors import DataKeyDestroyed

from symbi_context.errors import VectorStoreError
from symbi_context.vectors.port import Hit, MetaFilter, SparseVector, VectorPoint, VectorStore

#: Payload fields that hold content: sealed, never stored in the clear.
SEALED_FIELDS = ("text", "title", "source", "tags", "metadata", "origin")
#: The payload's ``scope`` is the aggregate type whose data key seals it; the kind tells the scope.
_KNOWLEDGE_KIND = "knowledge"
_MEMORY_KINDS = ("short_term", "long_term", "working")
_BLIND_LABEL = b"symbi-context blind index v1"
_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder(dict[str, Any])


def _blind_key(key: AeadKey) -> bytes:
    """A key for the blind index, derived from a data key (AES-GCM of a fixed label under a fixed nonce is a PRF
    of the key; nonces of real encryptions are random, so this one is never reused for anything else)."""
    _, out = key.encrypt(_BLIND_LABEL, b"blind-index", nonce=bytes(12))
    return out[:32]


def _term(blind: bytes, kind: str, value: Any) -> str:
    return hmac.new(blind, kind.encode() + b"\0" + _json.encode(value), hashlib.sha256).hexdigest()[:32]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


class SealedVectorStore:
    """A :class:`VectorStore` whose engine holds only ids, non-sensitive fields and sealed content."""

    def __init__(self, inner: VectorStore, datakeys: DataKeys) -> None:
        self.inner = inner
        self.datakeys = datakeys

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def _blind(self, name: str) -> bytes | None:
        try:
            return _blind_key(await self.datakeys.by_id(f"{name}/1"))
        except DataKeyDestroyed:
            return None

    # --- writes ---------------------------------------------------------------------------------------------

    async def _seal(self, point: VectorPoint) -> VectorPoint:
        payload = dict(point.payload)
        data_key_id = payload.get("data_key_id")
        if not isinstance(data_key_id, str):
            raise VectorStoreError(f"point {point.id} has no data_key_id: its content cannot be sealed")
        key = await self.datakeys.by_id(data_key_id)
        name, _ = split_key_id(data_key_id)
        blind = await self._blind(name)
        if blind is None:
            raise DataKeyDestroyed(f"data key {name}/1 was destroyed", key_id=f"{name}/1")
        content = {k: payload.pop(k) for k in SEALED_FIELDS if k in payload}
        nonce, ct = key.encrypt(_json.encode(content), f"{point.id}|{data_key_id}".encode())
        payload["sealed"] = base64.b64encode(nonce + ct).decode()
        payload["tags"] = [_term(blind, "tag", t) for t in content.get("tags", [])]
        flat: dict[str, Any] = {}
        _flatten("metadata", content.get("metadata", {}), flat)
        payload["terms"] = [_term(blind, k, v) for k, v in sorted(flat.items())]
        return VectorPoint(point.id, point.vector, point.keywords, payload)

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        sealed = []
        for p in points:
            try:
                sealed.append(await self._seal(p))
            except DataKeyDestroyed:
                continue  # shredded meanwhile: nothing of it may be stored
        await self.inner.upsert(sealed)

    async def delete(self, ids: Sequence[str]) -> None:
        await self.inner.delete(ids)

    async def delete_where(self, where: MetaFilter) -> None:
        blinded = await self._where(where)
        if blinded is not None:
            await self.inner.delete_where(blinded)

    # --- filters --------------------------------------------------------------------------------------------

    async def _where(self, where: MetaFilter | None) -> MetaFilter | None:
        """``where`` with tag and metadata conditions as blind terms of each owner it names.

        None for a filter that can match nothing (tags or metadata asked, but no owner's key is left).
        """
        if where is None:
            return None
        meta = {k: v for k, v in where.equals.items() if k.startswith("metadata.")}
        if not meta and not where.tags_any:
            return where
        if not where.owners:
            raise VectorStoreError("a tag or metadata filter needs owners: their keys make the terms")
        scopes = set()
        for kind in where.kinds or (*_MEMORY_KINDS, _KNOWLEDGE_KIND):
            scopes.add("knowledge" if kind == _KNOWLEDGE_KIND else "memory")
        blinds = [b for s in sorted(scopes) for o in where.owners if (b := await self._blind(f"{s}.{o}")) is not None]
        if not blinds:
            return None
        any_of = list(where.any_of)
        any_of += [("terms", tuple(_term(b, k, v) for b in blinds)) for k, v in sorted(meta.items())]
        tags = tuple(_term(b, "tag", t) for b in blinds for t in where.tags_any)
        equals = {k: v for k, v in where.equals.items() if k not in meta}
        return dataclasses.replace(where, equals=equals, tags_any=tags, any_of=tuple(any_of))

    # --- reads ----------------------------------------------------------------------------------------------

    async def _open(self, hits: Sequence[Hit]) -> list[Hit]:
        out = []
        for h in hits:
            payload = dict(h.payload)
            sealed = payload.pop("sealed", None)
            data_key_id = payload.get("data_key_id")
            if not isinstance(sealed, str) or not isinstance(data_key_id, str):
                continue  # not written through this layer: never served
            try:
                key = await self.datakeys.by_id(data_key_id)
            except DataKeyDestroyed:
                continue
            raw = base64.b64decode(sealed)
            plain = key.decrypt(raw[:12], raw[12:], f"{h.id}|{data_key_id}".encode())
            if plain is None:
                raise VectorStoreError(f"point {h.id}: sealed content does not open with {data_key_id}")
            payload.pop("terms", None)
            payload.update(_decode.decode(plain))
            out.append(Hit(h.id, h.score, payload))
        return out

    async def search(
        self, vector: npt.NDArray[np.float32], *, where: MetaFilter | None = None, limit: int = 10, exact: bool = False
    ) -> list[Hit]:
        if where is not None and (where := await self._where(where)) is None:
            return []
        return await self._open(await self.inner.search(vector, where=where, limit=limit, exact=exact))

    async def search_keywords(
        self, query: SparseVector, *, where: MetaFilter | None = None, limit: int = 10
    ) -> list[Hit]:
        if where is not None and (where := await self._where(where)) is None:
            return []
        return await self._open(await self.inner.search_keywords(query, where=where, limit=limit))

    async def scroll(self, where: MetaFilter | None = None, *, limit: int = 10_000) -> list[Hit]:
        if where is not None and (where := await self._where(where)) is None:
            return []
        return await self._open(await self.inner.scroll(where, limit=limit))

    async def count(self, where: MetaFilter | None = None) -> int:
        if where is not None and (where := await self._where(where)) is None:
            return 0
        return await self.inner.count(where)

    # --- position, maintenance ------------------------------------------------------------------------------

    async def position(self) -> int:
        return await self.inner.position()

    async def set_position(self, sequence: int) -> None:
        await self.inner.set_position(sequence)

    async def optimize(self) -> None:
        await self.inner.optimize()

    async def reset(self) -> None:
        await self.inner.reset()

    async def close(self) -> None:
        await self.inner.close()
