"""Gathering witness cosignatures (C2SP tlog-witness) for a checkpoint before it is published.

Each configured witness gets ``POST <url>/add-checkpoint`` with the size it last cosigned, the
consistency proof from there and the signed note. A 409 names the size the witness is at: the
request is made again from there. Only cosignature lines that verify with the witness's configured
key are kept; with fewer than ``min_witnesses`` of them the checkpoint is not published yet.
"""

from __future__ import annotations

import asyncio

import httpx
import structlog
from prometheus_client import Counter
from symbi_common.errors import ConfigError
from symbi_common.settings_sections import AuditSettings
from symbi_tlog.cosign import WitnessKey, add_signatures, verify_cosignatures
from symbi_tlog.errors import CosignatureInvalid
from symbi_tlog.merkle import consistency_ranges, hashes_for, nodes_for
from symbi_tlog.witness import SIZE_CONTENT_TYPE, format_add_checkpoint

from symbi_audit.store import AuditStore

log = structlog.get_logger(__name__)

COSIGNATURES = Counter(
    "symbi_audit_witness_requests_total", "add-checkpoint calls to witnesses, by outcome", ["witness", "outcome"]
)


class WitnessPool:
    """The configured witnesses and what size each was last seen to be at."""

    def __init__(self, settings: AuditSettings, store: AuditStore, *, timeout: float = 5.0) -> None:
        try:
            self.witnesses = [(w.url.rstrip("/"), WitnessKey.parse(w.key)) for w in settings.witnesses]
        except CosignatureInvalid as err:
            raise ConfigError(err.message, setting="audit.witnesses") from None
        if not 0 <= settings.min_witnesses <= len(self.witnesses):
            raise ConfigError(
                f"must be between 0 and the number of witnesses ({len(self.witnesses)})", setting="audit.min_witnesses"
            )
        self.min_witnesses = settings.min_witnesses
        self.store = store
        self.sizes: dict[str, int] = {}
        self.timeout = timeout
        self.ahead: dict[str, str] = {}
        """Witnesses that cosigned a larger tree than the log now has (name → reason): a rolled-back log."""

    @property
    def enabled(self) -> bool:
        return bool(self.witnesses)

    async def _proof(self, old: int, new: int) -> list[bytes]:
        if old == 0 or old == new:
            return []
        ranges = consistency_ranges(old, new)
        nodes = await self.store.nodes(sorted(nodes_for(ranges)))
        return hashes_for(ranges, nodes.__getitem__)

    async def cosign(self, note: str, size: int) -> str | None:
        """``note`` with the witnesses' cosignatures, or None if fewer than ``min_witnesses`` cosigned."""
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            lines = await asyncio.gather(*(self._ask(http, url, key, note, size) for url, key in self.witnesses))
        got = [line for line in lines if line]
        if len(got) < self.min_witnesses:
            log.warning("too few witness cosignatures", size=size, got=len(got), needed=self.min_witnesses)
            return None
        return add_signatures(note, "".join(got))

    async def _ask(self, http: httpx.AsyncClient, url: str, key: WitnessKey, note: str, size: int) -> str | None:
        for _ in range(3):
            old = self.sizes.get(key.name, 0)
            if old > size:
                log.error("witness is ahead of the log", witness=key.name, witness_size=old, size=size)
                COSIGNATURES.labels(key.name, "ahead").inc()
                self.ahead[key.name] = (
                    f"witness {key.name} cosigned a tree of size {old}, the log now signs size {size}: "
                    "the log was rolled back or its state lost"
                )
                return None
            body = format_add_checkpoint(old, await self._proof(old, size), note)
            try:
                answer = await http.post(f"{url}/add-checkpoint", content=body)
            except httpx.HTTPError as exc:
                log.warning("witness unreachable", witness=key.name, url=url, error=str(exc))
                COSIGNATURES.labels(key.name, "unreachable").inc()
                return None
            if answer.status_code == 409 and answer.headers.get("content-type", "").startswith(SIZE_CONTENT_TYPE):
                self.sizes[key.name] = int(answer.text.strip())
                continue
            if answer.status_code != 200:
                log.warning("witness refused", witness=key.name, status=answer.status_code, reason=answer.text.strip())
                COSIGNATURES.labels(key.name, str(answer.status_code)).inc()
                return None
            mine = "".join(f"{line}\n" for line in answer.text.splitlines() if line.startswith(f"\u2014 {key.name} "))
            if key.name not in verify_cosignatures(add_signatures(note, mine), [key]).valid:
                log.warning("witness answered with no valid cosignature", witness=key.name)
                COSIGNATURES.labels(key.name, "invalid").inc()
                return None
            self.sizes[key.name] = size
            self.ahead.pop(key.name, None)
            COSIGNATURES.labels(key.name, "cosigned").inc()
            return mine
        return None
