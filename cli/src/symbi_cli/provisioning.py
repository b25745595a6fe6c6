"""The NATS side of a fresh runtime: every stream and KV bucket, created with the admin credential."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from symbi_common.settings import Settings
    from symbi_common.streams import StreamSettings


async def provision_nats_async(
    url: str,
    settings: Any = None,
    *,
    existing_store: bool = False,
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
) -> None:
    """Create or update every stream and KV bucket at ``url`` (the admin's job, before services start).

    ``existing_store``: refuse to re-create a deleted history stream (see ``provision_streams``). TLS: the
    URL's own files or ``tls_*`` (the ``[nats]`` settings), as :func:`~symbi_common.nats_client.server_options`
    takes them.
    """
    import nats
    from symbi_common.nats_client import server_options
    from symbi_common.stream_provisioning import provision_streams

    # Any member of a cluster will do (comma-separated URLs); JetStream's meta leader answers through it.
    options = server_options(url, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
    nc = await nats.connect(**options, allow_reconnect=False, connect_timeout=5)
    try:
        await provision_streams(nc.jetstream(), settings, existing_store=existing_store)
    finally:
        await nc.drain()


def provision_nats(url: str, settings: Any = None) -> None:
    """:func:`provision_nats_async` for synchronous callers (test fixtures, tools)."""
    import asyncio

    asyncio.run(provision_nats_async(url, settings))


def stream_settings(settings: Settings) -> StreamSettings:
    """The stream and bucket limits the settings (``[nats]``, ``[scheduler]``) call for: a ``StreamSettings``."""
    from symbi_common.streams import StreamSettings

    return StreamSettings(
        replicas=settings.nats.replicas,
        events_max_bytes=settings.nats.events_max_bytes,
        duplicate_window_s=settings.nats.duplicate_window_s,
        lease_ttl_s=settings.scheduler.lease_ttl_s,
    )
