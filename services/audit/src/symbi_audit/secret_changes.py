"""Every change of the secrets store becomes an ``audit.secret_changed`` event (docs/secrets.md).

The operator writes the ``SECRETS`` KV bucket directly (``symbi secrets``); no service writes it, and the audit
service, which follows the bucket's stream, records each set and removal on the hash-chained log, whoever made
it. It reads only the sealed entries' metadata: it holds no secrets key, so the value never passes through it.

Each change is its own aggregate (``evt.audit.secret-<kv sequence>``, appended as a new aggregate), so a change
recorded before a crash and seen again after it is refused as a conflict and skipped: recorded exactly once.
"""

from __future__ import annotations

from typing import Any

import structlog
from symbi_common.errors import ConcurrencyConflict, SymbiError
from symbi_common.eventstore import EventStore
from symbi_common.follower import Delivery, Follower
from symbi_common.positions import PgPositions, Unit
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.secret_records import decode_sealed, name_of_bucket_key
from symbi_common.streams import SECRETS_BUCKET
from symbi_contracts.secrets.events import SecretChanged, secret_change_id

from symbi_audit.erasure import AGGREGATE_TYPE, CODEC

log = structlog.get_logger(__name__)

_PREFIX = f"$KV.{SECRETS_BUCKET}."
_REMOVALS = ("DEL", "PURGE")


def change_of(delivery: Delivery) -> SecretChanged | None:
    """The change one message of the bucket's stream records; None for a message the store did not write."""
    if not delivery.subject.startswith(_PREFIX):
        return None
    changed_at = delivery.stored_at.isoformat() if delivery.stored_at is not None else ""
    try:
        name = name_of_bucket_key(delivery.subject.removeprefix(_PREFIX))
        if delivery.headers.get("KV-Operation") in _REMOVALS:
            return SecretChanged(name=name, operation="removed", kv_sequence=delivery.sequence, changed_at=changed_at)
        sealed = decode_sealed(delivery.data)
    except SymbiError as exc:
        log.warning("secret_change_unreadable", subject=delivery.subject, sequence=delivery.sequence, error=str(exc))
        return None
    if sealed.name != name:
        log.warning("secret_change_misfiled", subject=delivery.subject, sequence=delivery.sequence)
        return None
    return SecretChanged(
        name=name,
        operation="set",
        version=sealed.version,
        changed_by=sealed.set_by,
        key_id=sealed.key_id,
        kv_sequence=delivery.sequence,
        changed_at=changed_at,
    )


class SecretChangeRecorder:
    """Follows the ``SECRETS`` bucket and appends one ``audit.secret_changed`` per change."""

    def __init__(self, js: Any, events: EventStore, positions: PgPositions) -> None:
        self.events = events
        self.positions = positions
        self.follower = Follower(
            js,
            service="audit",
            name="secrets",
            subjects=(f"{_PREFIX}>",),
            stream=f"KV_{SECRETS_BUCKET}",
            positions=positions,
            handler=self._record,
            batch=64,
        )

    async def setup(self) -> None:
        await self.positions.setup()

    async def run(self) -> None:
        await self.follower.run()

    async def _record(self, unit: Unit, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            change = change_of(delivery)
            if change is not None:
                await self.record(change)
            unit.advance(delivery.sequence)

    async def record(self, change: SecretChanged) -> None:
        """Append ``change`` as its own aggregate; one already recorded (a replay) is left as it is."""
        change_id = secret_change_id(change.kv_sequence)
        try:
            await self.events.append(
                AGGREGATE_TYPE, change_id, [change], CODEC, expected=NEW_AGGREGATE, correlation_id=change_id
            )
        except ConcurrencyConflict:
            return
        log.info("secret_change_recorded", name=change.name, operation=change.operation, version=change.version)
