"""Creating the streams and KV buckets, and checking that they exist.

Provisioning (:func:`provision_streams`) creates or updates every stream and KV bucket of
:mod:`symbi_common.streams` and needs the NATS ``admin`` credential: services may not create, update,
purge or delete streams, so they only check that what they need exists (:func:`require_streams`) and
fail with a clear error if not.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import nats.js.errors
import structlog
from nats.js.api import StreamConfig

from symbi_common.bus_streams import bus_buckets, deadletter_config, messages_config
from symbi_common.decision_queue import decisions_config
from symbi_common.errors import InfrastructureError
from symbi_common.operator_revocations import REVOCATIONS_BUCKET, revocations_config
from symbi_common.streams import (
    AUDIT_STREAM,
    DATAKEYS_BUCKET,
    EVENTS_STREAM,
    REQUIRED_STREAMS,
    StreamSettings,
    audit_config,
    bucket_configs,
    events_config,
    registry_config,
    snapshots_config,
    work_config,
)

log = structlog.get_logger(__name__)

#: A replicated stream's placement waits this long for enough cluster members to be known online.
PLACEMENT_WAIT_S = 60.0
#: JetStream's "no suitable peers for placement": the cluster does not have as many members online (yet).
_NO_PEERS = 10005
#: JetStream's "insufficient storage resources available": the stream's byte limit does not fit the server's store.
_NO_STORAGE = 10047


#: Streams whose loss is lost history: never re-created silently on a store that held them (an empty
#: revocations bucket would put every revoked operator token back in service).
HISTORY_STREAMS = (EVENTS_STREAM, AUDIT_STREAM, "KV_" + DATAKEYS_BUCKET, "KV_" + REVOCATIONS_BUCKET)


async def provision_streams(
    js: Any,
    settings: StreamSettings | None = None,
    *,
    existing_store: bool = False,
    placement_wait_s: float = PLACEMENT_WAIT_S,
) -> None:
    """Create the streams and KV buckets if missing, or update the streams to the current configuration.

    Idempotent. Needs the NATS ``admin`` credential (``symbi up`` runs it before any service starts).
    ``existing_store``: the server's store is not new, so a missing history stream (``EVENTS``,
    ``AUDIT``, KV ``DATAKEYS``) was deleted: raise :class:`InfrastructureError` instead of starting
    a fresh, empty one. A replicated stream waits up to ``placement_wait_s`` for enough cluster members.
    """
    s = settings or StreamSettings()
    if existing_store and (name := await _first_missing(js, HISTORY_STREAMS)) is not None:
        raise InfrastructureError(
            f"the JetStream store exists but stream {name} is missing: its history was deleted; "
            "refusing to re-create it empty (restore the store, or start over with a new home)"
        )
    queues = (
        messages_config(s.replicas, s.duplicate_window_s, s.max_msg_size),
        deadletter_config(s.replicas),
        decisions_config(s.replicas, s.duplicate_window_s, s.max_msg_size),
    )
    streams = (
        events_config(s),
        snapshots_config(s),
        audit_config(s),
        work_config(s),
        registry_config(s),
        revocations_config(s.replicas),  # created, or a bucket of an older version made append-only
        *queues,
    )
    reserved = sum(max(cfg.max_bytes or 0, 0) for cfg in streams)
    for cfg in streams:
        await _placed(cfg.name or "", functools.partial(_add_or_update, js, cfg, reserved), placement_wait_s)
    for kv in (*bucket_configs(s), *bus_buckets(s.replicas)):
        try:
            await js.key_value(kv.bucket)
        except nats.js.errors.BucketNotFoundError:
            await _placed("KV_" + kv.bucket, functools.partial(js.create_key_value, kv), placement_wait_s)


async def _add_or_update(js: Any, cfg: StreamConfig, reserved: int) -> None:
    try:
        # An existing stream is updated, never added again: the server counts an add's byte reservation
        # before it finds the stream, so on a capped store that holds the streams once, adding them again
        # is refused for storage.
        try:
            current = (await js.stream_info(cfg.name)).config
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)
            return
        if current.allow_msg_ttl and not cfg.allow_msg_ttl:  # the server cannot switch per-message TTLs off
            cfg = replace(cfg, allow_msg_ttl=True)
        await js.update_stream(cfg)
    except nats.js.errors.APIError as exc:
        if exc.err_code != _NO_STORAGE:
            raise
        raise InfrastructureError(
            f"stream {cfg.name} cannot reserve its {_gib(cfg.max_bytes or 0)} on the NATS server: {exc.description}."
            f" The runtime's streams reserve {_gib(reserved)} in all, {_gib(cfg.max_bytes or 0)} of it for"
            f" {cfg.name}, and nats-server's JetStream store limit is 75 % of the disk free when it starts unless"
            " its jetstream.max_file_store says otherwise: free disk space and restart the server, raise that limit,"
            " or lower events_max_bytes ([nats] section, SYMBI_NATS__EVENTS_MAX_BYTES)"
        ) from None


def _gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB"


async def _placed(name: str, create: Callable[[], Awaitable[Any]], wait_s: float) -> None:
    """``create()``, tried again while the cluster has too few members online to place the stream's replicas
    (members of a cluster that just started join its meta group one by one) — for ``wait_s`` at most."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            await create()
            return
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _NO_PEERS:
                raise
            if asyncio.get_running_loop().time() >= deadline:
                raise InfrastructureError(
                    f"stream {name} cannot be placed: {exc.description} (after {wait_s:g} s; are all the"
                    " cluster's members up?)"
                ) from None
            log.info("stream placement waits for cluster members", stream=name, error=exc.description)
            await asyncio.sleep(0.5)


async def require_streams(js: Any, names: tuple[str, ...] = REQUIRED_STREAMS) -> None:
    """Check that the streams (and KV buckets, ``KV_<bucket>``) a service needs exist; never creates them.

    Raises :class:`InfrastructureError` naming what is missing: a service does not re-create a
    stream that was deleted (that would silently start a fresh, short history).
    """
    if (name := await _first_missing(js, names)) is not None:
        raise InfrastructureError(
            f"JetStream stream {name} does not exist; streams and KV buckets are provisioned by the "
            "NATS admin before services start (`symbi up`, or provision_streams with the admin credential)"
        )


async def _first_missing(js: Any, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is not a stream (a KV bucket is ``KV_<bucket>``), or ``None``."""
    for name in names:
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return name
    return None
