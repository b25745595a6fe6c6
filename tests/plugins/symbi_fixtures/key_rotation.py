"""A signing-key rotation that one process has not learnt yet: two service runtimes on one nats-server, the
``lagging`` one with its key registry follower stopped right after its start, the ``signing`` one switching to
a rotated key as soon as the version is on the ``REGISTRY`` stream. Helpers, not fixtures: each test builds the
runtimes it needs (which services, which settings)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from nats.aio.client import Client as NatsClient
from symbi_common.key_material import read_key_file
from symbi_common.keyfiles import rotate_service_key
from symbi_common.registry_stream import publish, read_signed_files
from symbi_common.service import ServiceRuntime


def runtime_env(nats_url: str, keys_dir: Path, **extra: str) -> dict[str, str]:
    """The settings a test runtime needs (``extra``: more ``SYMBI_*`` variables)."""
    return {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_LOG_LEVEL": "warning", **extra}


async def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def publish_key_files(nc: NatsClient, keys_dir: Path) -> int | None:
    """Publish the key files' registry version on ``REGISTRY`` (as ``symbi up`` and ``symbi keys`` do)."""
    return await publish(nc, read_signed_files(keys_dir), read_key_file(keys_dir / "root.pub"))


@asynccontextmanager
async def signing_and_lagging(
    signing: ServiceRuntime, lagging: ServiceRuntime, nc: NatsClient, keys_dir: Path
) -> AsyncIterator[tuple[ServiceRuntime, ServiceRuntime]]:
    """Start both (``lagging`` first, its key registry follower then stopped: it learns a new version only by
    catching up); stopped on exit."""
    await publish_key_files(nc, keys_dir)  # the key files' version is on the stream (`symbi up` does this)
    started: list[ServiceRuntime] = []
    try:
        await lagging.start()
        started.append(lagging)
        (follow,) = [t for t in asyncio.all_tasks() if t.get_name() == "keys:follow"]
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await signing.start()
        started.append(signing)
        yield signing, lagging
    finally:
        for rt in reversed(started):
            await rt.stop()


async def rotate(signing: ServiceRuntime, nc: NatsClient, keys_dir: Path) -> str:
    """``symbi keys rotate <signing's service>``, published; returns the new key id once ``signing`` signs with it."""
    version = signing.registry.version
    new_key = rotate_service_key(keys_dir, signing.name)
    assert await publish_key_files(nc, keys_dir) == version + 1
    await eventually(lambda: signing.store.signer.key_id == new_key.key_id, f"{signing.name} signs with the new key")
    return new_key.key_id
