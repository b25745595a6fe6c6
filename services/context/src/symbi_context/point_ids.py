"""Which id a memory's point has in the vector store, and which id a hit is known by outside.

A memory id is the agent's (or the service's) and unique only per owner; it need not be a UUID, which the
engines require of a point id. A memory's point is therefore keyed by its owner and its id (a UUIDv5), and
carries its own id in the payload (``memory_id``): two owners' memories never share a point, and an id that
is no UUID never reaches an engine. (Knowledge chunks already have UUIDv5 ids of their own.) Pure.
"""

from __future__ import annotations

import uuid

from symbi_context.vectors.port import Hit

#: The namespace of memory point ids.
MEMORY_POINTS = uuid.UUID("0e5f3c2a-7b1d-4f6e-8a9c-3d2b1a0f9e8d")
#: The layout of the points in the store; an index written in an older one is rebuilt (a store of its own).
INDEX_LAYOUT = 2


def memory_point_id(owner: str, memory_id: str) -> str:
    return str(uuid.uuid5(MEMORY_POINTS, f"{owner}/{memory_id}"))


def item_id(hit: Hit) -> str:
    """The id a hit is known by to agents and operators: a memory's own id, or a knowledge chunk's."""
    return str(hit.payload.get("memory_id") or hit.id)
