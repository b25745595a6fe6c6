"""Per-aggregate data keys over both stores (JetStream KV on a real server, and in memory)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import pytest
from nats.js import JetStreamContext
from symbi_common.datakeys import (
    DATAKEYS_BUCKET,
    DataKeys,
    DataKeyStore,
    KvDataKeyStore,
    MemoryDataKeyStore,
    split_key_id,
)
from symbi_common.errors import DataKeyDestroyed, KeyringError


@pytest.fixture(params=["kv", "memory"])
async def store(request: pytest.FixtureRequest, js: JetStreamContext) -> DataKeyStore:
    if request.param == "memory":
        return MemoryDataKeyStore()
    return await KvDataKeyStore.open(js)


async def test_current_is_created_once_and_shared(store: DataKeyStore, master_key: bytes) -> None:
    a, b = DataKeys(store, master_key), DataKeys(store, master_key)
    # Many first uses at once, from two "processes": one record wins, everyone uses its key.
    keys = await asyncio.gather(*(dk.current("agent.a1") for dk in (a, b) for _ in range(5)))
    assert {k.key_id for k in keys} == {"agent.a1/1"}
    nonce, ct = keys[0].encrypt(b"secret", b"aad")
    for k in keys[1:]:
        assert k.decrypt(nonce, ct, b"aad") == b"secret"
    assert (await a.by_id("agent.a1/1")).decrypt(nonce, ct, b"aad") == b"secret"
    assert (await DataKeys(store, master_key).by_id("agent.a1/1")).decrypt(nonce, ct, b"aad") == b"secret"
    # Each aggregate has its own key.
    other = await a.current("agent.a2")
    assert other.key_id == "agent.a2/1"
    assert other.decrypt(nonce, ct, b"aad") is None


async def test_rotation(store: DataKeyStore, master_key: bytes) -> None:
    dk = DataKeys(store, master_key)
    gen1 = await dk.current("agent.r")
    nonce, ct = gen1.encrypt(b"old", b"")
    assert await dk.rotate("agent.r") == "agent.r/2"
    assert await dk.rotate("agent.r") == "agent.r/3"
    assert (await dk.current("agent.r")).key_id == "agent.r/3"
    fresh = DataKeys(store, master_key)
    assert (await fresh.current("agent.r")).key_id == "agent.r/3"
    assert (await fresh.by_id("agent.r/1")).decrypt(nonce, ct, b"") == b"old"
    # A process that cached an older generation finds newer ones on demand.
    assert (await dk.by_id("agent.r/2")).key_id == "agent.r/2"
    with pytest.raises(DataKeyDestroyed, match="does not exist"):
        await fresh.by_id("agent.r/9")
    # Rotating a key that does not exist yet creates generation 1 first.
    assert await dk.rotate("agent.new") == "agent.new/2"


async def test_destroy(store: DataKeyStore, master_key: bytes) -> None:
    dk = DataKeys(store, master_key)
    await dk.current("agent.d")
    other = DataKeys(store, master_key)
    await other.by_id("agent.d/1")  # cached elsewhere
    await dk.destroy("agent.d")
    with pytest.raises(DataKeyDestroyed) as exc:
        await dk.by_id("agent.d/1")
    assert exc.value.details["key_id"] == "agent.d/1"
    with pytest.raises(DataKeyDestroyed):
        await DataKeys(store, master_key).by_id("agent.d/1")
    # Another process keeps its cached key until told to forget it.
    await other.by_id("agent.d/1")
    other.forget("agent.d")
    with pytest.raises(DataKeyDestroyed):
        await other.by_id("agent.d/1")
    # A destroyed key is never re-created (that would reuse its id for another key).
    with pytest.raises(DataKeyDestroyed):
        await DataKeys(store, master_key).current("agent.d")
    with pytest.raises(DataKeyDestroyed):
        await dk.rotate("agent.d")
    with pytest.raises(DataKeyDestroyed):
        await DataKeys(store, master_key).by_id("agent.never/1")


async def test_wrong_master_key(store: DataKeyStore, master_key: bytes) -> None:
    await DataKeys(store, master_key).current("agent.m")
    with pytest.raises(KeyringError, match="wrapped by master key"):
        await DataKeys(store, os.urandom(32)).by_id("agent.m/1")


async def test_wrapped_keys_are_bound_to_their_id(store: DataKeyStore, master_key: bytes) -> None:
    """A wrapped key copied under another aggregate's name does not unwrap there."""
    await DataKeys(store, master_key).current("agent.src")
    got = await store.get("agent.src")
    assert got is not None
    assert await store.create("agent.dst", got[0])
    with pytest.raises(KeyringError, match="cannot be unwrapped"):
        await DataKeys(store, master_key).by_id("agent.dst/1")


async def test_kv_bucket_is_opened_idempotently(js: JetStreamContext) -> None:
    first = await KvDataKeyStore.open(js)
    second = await KvDataKeyStore.open(js)
    assert await first.create("x", b"1")
    assert not await second.create("x", b"2")
    got = await second.get("x")
    assert got is not None
    assert got[0] == b"1"
    assert await second.update("x", b"3", got[1])
    assert not await first.update("x", b"4", got[1])  # stale revision
    status = await (await js.key_value(DATAKEYS_BUCKET)).status()
    assert status.bucket == DATAKEYS_BUCKET


def test_split_key_id() -> None:
    assert split_key_id("agent.a1/3") == ("agent.a1", 3)
    for bad in ("agent.a1", "agent.a1/", "/3", "agent.a1/x"):
        with pytest.raises(KeyringError, match="malformed data key id"):
            split_key_id(bad)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_other_processes_forget_destroyed_and_rotated_keys(store: DataKeyStore, master_key: bytes) -> None:
    reader, writer = DataKeys(store, master_key), DataKeys(store, master_key)
    follower = asyncio.create_task(reader.follow_changes())
    try:
        await asyncio.sleep(0.1)  # the watch is up
        first = await reader.current("agent.a")
        assert (await writer.current("agent.a")).key_id == first.key_id

        new_id = await writer.rotate("agent.a")

        async def rotated() -> bool:
            return (await reader.current("agent.a")).key_id == new_id

        assert await _until(rotated), "the reader kept sealing with the old generation"
        assert (await reader.by_id(first.key_id)).key_id == first.key_id  # old events still decrypt

        await writer.destroy("agent.a")

        async def shredded() -> bool:
            try:
                await reader.by_id(new_id)
            except DataKeyDestroyed:
                return True
            return False

        assert await _until(shredded), "the reader still decrypts with a destroyed key"
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
