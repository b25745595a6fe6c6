"""Operator-token revocations: the append-only ``OPERATOR_REVOCATIONS`` KV bucket and the set of revoked token
ids every service's guard (:class:`symbi_common.operator_auth.OperatorGuard`) and ``symbi token list`` read from it.

A revocation is a :class:`~symbi_common.operator_tokens.Revocation` signed by an operator-token issuer, stored under
the token id (written by the operator's ``symbi token revoke``). Once stored it is never removed or replaced, and a
token once revoked stays revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import nats.js.errors
import structlog
from nats.js.api import DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from symbi_common.crypto import Verifier
from symbi_common.operator_tokens import decode_revocation, signed_by_issuer
from symbi_common.ordered_pull import OrderedPull, kv_change

log = structlog.get_logger(__name__)

#: The JetStream KV bucket holding signed revocations (key: token id). Written with the operator credential.
REVOCATIONS_BUCKET = "OPERATOR_REVOCATIONS"
#: How long the revocation follower waits per pull while nothing is revoked (a revocation wakes it at once).
REVOCATIONS_WAIT_S = 30.0
#: The largest entry the revocations bucket takes (a signed revocation is about 250 bytes).
REVOCATION_MAX_BYTES = 4096
#: The entries one key of the revocations bucket keeps: all of them. A bound no key reaches, because nats-py
#: opens a KV bucket only with a per-key limit (and a limit that is reached would drop or refuse entries).
REVOCATION_HISTORY = 1 << 40
#: Revocation entries signed by a key that is no issuer (yet), kept to check again when the issuers change.
_MAX_UNVERIFIED = 10_000


def revocations_config(replicas: int) -> StreamConfig:
    """``KV_OPERATOR_REVOCATIONS``: the KV bucket of operator token revocations, append-only in effect.

    A revocation once stored is never removed or replaced: every entry of a key is kept (a put on a revoked
    token's key, or a delete marker, is one more entry, never a replacement), nothing ages out, a KV purge is
    refused (no roll-ups) and so are the message delete and purge APIs (``deny_delete``, ``deny_purge``), for
    the ``admin`` too. The services' guards read every entry (:class:`Revocations`).
    Opened as a KV bucket (``js.key_value``) like any other. A bucket made by an earlier version keeps
    per-message TTLs allowed (the server cannot switch them off): only an entry written with a TTL expires,
    and ``symbi token revoke`` writes none.
    """
    return StreamConfig(
        name="KV_" + REVOCATIONS_BUCKET,
        subjects=[f"$KV.{REVOCATIONS_BUCKET}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=REVOCATION_HISTORY,
        max_msg_size=REVOCATION_MAX_BYTES,
        discard=DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
        duplicate_window=120.0,
    )


class Revocations:
    """The revoked token ids, kept current from every entry of the ``OPERATOR_REVOCATIONS`` bucket.

    A token id once revoked stays revoked: a later entry of its key (a delete marker, another value) changes
    nothing. An entry counts if an issuer in ``issuers`` signed it for the token id that is its key. One
    signed by a key that is no issuer is kept (up to ``_MAX_UNVERIFIED``) and checked again when the issuers
    change (:meth:`use_issuers`): a new issuer's revocation may arrive before the registry version naming it.
    """

    def __init__(self, issuers: Mapping[str, Verifier]) -> None:
        self.issuers = issuers
        self.revoked: set[str] = set()
        self.loaded = asyncio.Event()
        self.ignored = 0
        self._unverified: dict[tuple[str, bytes], None] = {}  # (key, value), in the order they came

    def apply(self, key: str, value: bytes | None) -> None:
        """One bucket entry; a deletion or an entry no issuer signed changes nothing."""
        if not value or self._check(key, value):
            return
        self.ignored += 1
        log.warning("ignored a revocation entry no operator-token issuer signed", key=key)

    def use_issuers(self, issuers: Mapping[str, Verifier]) -> None:
        """Verify with ``issuers`` from now on, and check again the entries no issuer had signed."""
        self.issuers = issuers
        waiting, self._unverified = self._unverified, {}
        for key, value in waiting:
            self._check(key, value)

    def _check(self, key: str, value: bytes) -> bool:
        """Whether the entry revokes its key's token (it is then revoked); one signed by a key that is no
        issuer is kept for :meth:`use_issuers`."""
        revocation = decode_revocation(value)
        if revocation is None or revocation.tid != key:
            return False
        if signed_by_issuer(revocation, self.issuers):
            self.revoked.add(key)
            return True
        if revocation.kid not in self.issuers and len(self._unverified) < _MAX_UNVERIFIED:
            self._unverified[(key, value)] = None
        return False

    async def follow(self, js: Any, *, once: bool = False) -> None:
        """Read the bucket from its first entry, then follow it until cancelled (``once``: until the entries
        there at the start are in); ``loaded`` is set once they are."""
        await open_revocations_bucket(js)
        prefix = f"$KV.{REVOCATIONS_BUCKET}."
        feed = OrderedPull(
            js, stream=f"KV_{REVOCATIONS_BUCKET}", subject=prefix + ">", deliver_policy=DeliverPolicy.ALL
        )
        await feed.open()
        try:
            while True:
                if feed.caught_up:
                    self.loaded.set()
                    if once:
                        return
                for msg in await feed.take(REVOCATIONS_WAIT_S):
                    key, removed = kv_change(msg, prefix)
                    self.apply(key, None if removed else bytes(msg.data))
        finally:
            await feed.close()


async def open_revocations_bucket(js: Any, *, create: bool = True) -> Any:
    """The ``OPERATOR_REVOCATIONS`` KV bucket, created append-only (:func:`revocations_config`)
    if missing (and ``create``; the ``admin`` provisions it before any service starts)."""
    try:
        return await js.key_value(REVOCATIONS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise
        with contextlib.suppress(nats.js.errors.BadRequestError):  # created meanwhile by another process
            await js.add_stream(revocations_config(replicas=1))
        return await js.key_value(REVOCATIONS_BUCKET)
