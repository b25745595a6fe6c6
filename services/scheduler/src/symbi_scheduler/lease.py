"""Leader election through a JetStream KV lease: only the holder schedules.

The lease is key ``leader`` in bucket ``SCHEDULER`` whose entries expire ``ttl`` seconds after they
were written (the bucket's max age, enforced by the server, so no replica's clock matters). The holder
rewrites it every ``ttl / 3`` with a conditional update on the revision it last wrote; anyone else
tries a conditional create, which succeeds only once the key has expired or was released. A holder
that misses its renewal (paused, partitioned) finds its update refused and steps down. A write it still had
in flight is decided again on the task's newest state when its conditional append conflicts: an assignment
must be the next attempt and every other event must name the current one (``domain.decide``), so it is refused
rather than applied to what the new leader did meanwhile.
"""

from __future__ import annotations

import contextlib
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from symbi_common.errors import InfrastructureError

log = structlog.get_logger(__name__)

BUCKET = "SCHEDULER"
KEY = "leader"


class Lease:
    """This replica's view of the scheduler lease."""

    def __init__(self, js: Any, replica_id: str, *, ttl_s: float, replicas: int = 1) -> None:
        self.js = js
        self.replica_id = replica_id
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.kv: Any = None
        self.revision: int | None = None

    @property
    def held(self) -> bool:
        return self.revision is not None

    async def open(self) -> None:
        # Provisioned by the NATS admin with the lease TTL (symbi_common.streams.bucket_configs).
        try:
            self.kv = await self.js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            raise InfrastructureError(f"KV bucket {BUCKET} does not exist; the NATS admin provisions it") from None

    async def holder(self) -> str | None:
        """The replica holding the lease now, if any."""
        try:
            entry = await self.kv.get(KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return bytes(entry.value or b"").decode() or None

    async def tick(self) -> bool:
        """Renew the lease if we hold it, else try to take it; True while we hold it."""
        value = self.replica_id.encode()
        if self.revision is not None:
            try:
                self.revision = await self.kv.update(KEY, value, last=self.revision)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("scheduler lease lost", replica=self.replica_id)
                self.revision = None
            except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
                # Unknown whether the renewal landed: step down; the lease expires or we retake it.
                log.warning("scheduler lease renewal failed", replica=self.replica_id, error=str(exc))
                self.revision = None
                return False
        try:
            self.revision = await self.kv.create(KEY, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
            log.debug("scheduler lease not taken", error=str(exc))
            return False
        log.info("scheduler lease taken", replica=self.replica_id)
        return True

    async def release(self) -> None:
        """Give the lease up (clean shutdown) so another replica takes over at once."""
        if self.revision is None or self.kv is None:
            return
        revision, self.revision = self.revision, None
        with contextlib.suppress(Exception):
            await self.kv.delete(KEY, last=revision)
