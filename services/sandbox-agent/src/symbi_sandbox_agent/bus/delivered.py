"""What an inbox hands to its agent: opened messages, and the fetched batch they came in until it is settled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from symbi_contracts.bus import Meta


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message handed to its recipient: metadata and the decrypted body."""

    meta: Meta
    body: Any

    def as_dict(self) -> dict[str, Any]:
        m = self.meta
        out: dict[str, Any] = {"id": m.id, "kind": m.kind, "from": m.sender, "body": self.body, "sent_at": m.sent_at}
        for name in ("to", "topic", "classification", "in_reply_to"):
            if getattr(m, name):
                out[name] = getattr(m, name)
        return out


@dataclass(slots=True)
class Batch:
    """Messages opened for ``agent_id`` and handed over, their fetched originals ``held`` un-acked until
    the carrier's ``commit`` (or handed back with ``release``)."""

    agent_id: str
    delivered: list[Delivered]
    held: list[Any]
    #: Messages handed back because their delivery could not be decided (no policy decision to be had).
    undecided: int = 0
