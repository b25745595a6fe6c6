"""Revocations that reach back: events already verified that a newer registry version refuses.

A key is revoked with a cutoff (``revoked_after_sequence``: events it signed after that stream sequence are
refused; none: all of them). The verifier checks each event once, as it arrives, with the registry of that
moment; an event signed by the key after the cutoff but verified before the revocation was published would keep
its ``verified`` mark. So each time the registry in use changes, every key revoked in it (with a cutoff not
applied before) has its events after the cutoff marked unverified, each with a ``key_revoked`` finding.
"""

from __future__ import annotations

import structlog
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_document import REVOKED, RegistryDocument

from symbi_audit.store import AuditStore

log = structlog.get_logger(__name__)


class Revocations:
    """Applies the registry's revocations to events already verified (:meth:`catch_up`)."""

    def __init__(self, registry: KeyRegistry, store: AuditStore) -> None:
        self.registry = registry
        self.store = store
        self._document: RegistryDocument | None = None
        #: The cutoff applied for each revoked key (``None``: every event of the key).
        self._applied: dict[str, int | None] = {}

    async def catch_up(self) -> int:
        """Apply the revocations of the registry version in use not applied yet; the events newly refused."""
        document = self.registry.document
        if document is self._document:
            return 0
        refused = 0
        for key in document.keys:
            if key.status != REVOKED:
                continue
            cutoff = key.revoked_after_sequence
            if key.key_id in self._applied and self._applied[key.key_id] == cutoff:
                continue
            after = "" if cutoff is None else f" after stream sequence {cutoff}"
            reason = f"key {key.key_id} of service {key.service} was revoked{after} ({key.revoked_at})"
            changed = await self.store.revoke_after(key.key_id, cutoff, reason)
            if changed:
                log.warning("revocation reached verified events", key_id=key.key_id, events=len(changed))
            refused += len(changed)
            self._applied[key.key_id] = cutoff
        self._document = document
        return refused
