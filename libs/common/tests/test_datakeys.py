"""Per-aggregate data keys over both stores (JetStream KV on a real server, and in memory)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

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
from symbi_common.errors import DataKeyDestroyed, DataKeyNotEntitled, InfrastructureError, KeyringError
from symbi_common.keyfiles import load_service_keys
from symbi_common.keyring import KeyRegistry

Make = Callable[..., DataKeys]


@pytest.fixture(params=["kv", "memory"])
async def store(request: pytest.FixtureRequest, js: JetStreamContext) -> DataKeyStore:
    if request.param == "memory":
        return MemoryDataKeyStore()
    return await KvDataKeyStore.open(js)


@pytest.fixture
def make(store: DataKeyStore, keys_dir: Path, registry: KeyRegistry) -> Make:
    """``make("scheduler")``: a process of that service (own cache, own wrap key) over the shared store."""

    def build(service: str = "lifecycle", *, on: DataKeyStore | None = None) -> DataKeys:
        keys = load_service_keys(keys_dir / service, service)
        return DataKeys(on or store, keys.wrap, registry, service=service)

    return build


async def test_current_is_created_once_and_shared(make: Make) -> None:
    a, b = make(), make()
    # Many first uses at once, from two "processes": one record wins, everyone uses its key.
    keys = await asyncio.gather(*(dk.current("agent.a1") for dk in (a, b) for _ in range(5)))
    assert {k.key_id for k in keys} == {"agent.a1/1"}
    nonce, ct = keys[0].encrypt(b"secret", b"aad")
    for k in keys[1:]:
        assert k.decrypt(nonce, ct, b"aad") == b"secret"
    assert (await a.by_id("agent.a1/1")).decrypt(nonce, ct, b"aad") == b"secret"
    assert (await make().by_id("agent.a1/1")).decrypt(nonce, ct, b"aad") == b"secret"
    # Each aggregate has its own key.
    other = await a.current("agent.a2")
    assert other.key_id == "agent.a2/1"
    assert other.decrypt(nonce, ct, b"aad") is None


async def test_current_for_a_new_aggregate_creates_first_and_still_shares_one_key(make: Make) -> None:
    """``new=True`` (a first append) creates without reading first; racing writers, a record that exists
    already and a destroyed key all still end on the one stored record (or refuse)."""
    a, b = make(), make()
    keys = await asyncio.gather(*(dk.current("task.t1", new=True) for dk in (a, b) for _ in range(3)))
    assert {k.key_id for k in keys} == {"task.t1/1"}
    nonce, ct = keys[0].encrypt(b"secret", b"aad")
    assert all(k.decrypt(nonce, ct, b"aad") == b"secret" for k in keys)
    # A record that exists (this process never saw it): the create loses and the stored key is used.
    late = await make().current("task.t1", new=True)
    assert late.decrypt(nonce, ct, b"aad") == b"secret"
    await a.destroy("task.t1")
    with pytest.raises(DataKeyDestroyed):
        await make().current("task.t1", new=True)


async def test_rotation(make: Make) -> None:
    dk = make()
    gen1 = await dk.current("agent.r")
    nonce, ct = gen1.encrypt(b"old", b"")
    assert await dk.rotate("agent.r") == "agent.r/2"
    assert await dk.rotate("agent.r") == "agent.r/3"
    assert (await dk.current("agent.r")).key_id == "agent.r/3"
    fresh = make()
    assert (await fresh.current("agent.r")).key_id == "agent.r/3"
    assert (await fresh.by_id("agent.r/1")).decrypt(nonce, ct, b"") == b"old"
    # A process that cached an older generation finds newer ones on demand.
    assert (await dk.by_id("agent.r/2")).key_id == "agent.r/2"
    with pytest.raises(DataKeyDestroyed, match="does not exist"):
        await fresh.by_id("agent.r/9")
    # Rotating a key that does not exist yet creates generation 1 first.
    assert await dk.rotate("agent.new") == "agent.new/2"


async def test_a_key_rotates_itself_after_its_encryptions(make: Make) -> None:
    """After ``rotate_after`` encryptions in this process the next ``current`` rotates the key
    once, however many callers notice together; what the worn generation sealed still opens."""
    dk = make()
    dk.rotate_after = 3
    worn = await dk.current("agent.w")
    sealed = [worn.encrypt(b"p%d" % i, b"") for i in range(3)]
    assert (await dk.current("agent.w")).key_id == "agent.w/2"  # (two encryptions would not have rotated it)
    fresh = await dk.current("agent.w")
    sealed += [fresh.encrypt(b"p3", b""), fresh.encrypt(b"p4", b""), fresh.encrypt(b"p5", b"")]
    together = await asyncio.gather(*(dk.current("agent.w") for _ in range(8)))
    assert {k.key_id for k in together} == {"agent.w/3"}
    other = make()
    assert (await other.current("agent.w")).key_id == "agent.w/3"
    for i, (nonce, ct) in enumerate(sealed):
        key = await other.by_id(f"agent.w/{1 + i // 3}")
        assert key.decrypt(nonce, ct, b"") == b"p%d" % i


async def test_a_worn_key_destroyed_elsewhere_is_refused_not_rotated(make: Make) -> None:
    """A worn key that another process destroyed before this one heard of it: its next use is refused
    (DataKeyDestroyed), never a new key and never a hang."""
    dk = make()
    dk.rotate_after = 1
    (await dk.current("agent.z")).encrypt(b"x", b"")
    await make().destroy("agent.z")  # (this process has not heard of it yet: its cache still holds the key)
    with pytest.raises(DataKeyDestroyed):
        await asyncio.wait_for(dk.current("agent.z"), 10)
    with pytest.raises(DataKeyDestroyed):
        await asyncio.wait_for(dk.current("agent.z"), 10)


async def test_destroy(make: Make) -> None:
    dk = make()
    await dk.current("agent.d")
    other = make()
    await other.by_id("agent.d/1")  # cached elsewhere
    await dk.destroy("agent.d")
    with pytest.raises(DataKeyDestroyed) as exc:
        await dk.by_id("agent.d/1")
    assert exc.value.details["key_id"] == "agent.d/1"
    with pytest.raises(DataKeyDestroyed):
        await make().by_id("agent.d/1")
    # Another process keeps its cached key until told to forget it.
    await other.by_id("agent.d/1")
    other.forget("agent.d")
    with pytest.raises(DataKeyDestroyed):
        await other.by_id("agent.d/1")
    # A destroyed key is never re-created (that would reuse its id for another key).
    with pytest.raises(DataKeyDestroyed):
        await make().current("agent.d")
    with pytest.raises(DataKeyDestroyed):
        await dk.rotate("agent.d")
    with pytest.raises(DataKeyDestroyed):
        await make().by_id("agent.never/1")


async def test_only_entitled_services_read(make: Make) -> None:
    """A data key is sealed to the writer and the declared readers of its aggregate type only."""
    writer = make("lifecycle")
    key = await writer.current("agent.m")
    nonce, ct = key.encrypt(b"secret", b"")
    for reader in ("scheduler", "policy", "audit"):
        assert (await make(reader).by_id("agent.m/1")).decrypt(nonce, ct, b"") == b"secret", reader
    for outsider in ("context", "sandbox-agent"):
        with pytest.raises(DataKeyNotEntitled, match=f"service {outsider} is not entitled") as exc:
            await make(outsider).by_id("agent.m/1")
        assert exc.value.code == "data_key_not_entitled"
    memory = await make("context").current("memory.m")
    nonce, ct = memory.encrypt(b"note", b"")
    assert (await make("audit").by_id("memory.m/1")).decrypt(nonce, ct, b"") == b"note"
    for outsider in ("lifecycle", "scheduler", "policy", "sandbox-agent"):
        with pytest.raises(DataKeyNotEntitled):
            await make(outsider).by_id("memory.m/1")
    # Rotation seals the new generation to the same readers.
    await writer.rotate("agent.m")
    assert (await make("scheduler").by_id("agent.m/2")).key_id == "agent.m/2"
    with pytest.raises(DataKeyNotEntitled):
        await make("context").by_id("agent.m/2")


async def test_wrapped_keys_are_bound_to_their_id(make: Make, store: DataKeyStore) -> None:
    """A sealed key copied under another aggregate's name does not open there."""
    await make().current("agent.src")
    got = await store.get("agent.src")
    assert got is not None
    assert await store.create("agent.dst", got[0])
    with pytest.raises(KeyringError, match="does not open"):
        await make().by_id("agent.dst/1")
    assert await store.create("agent.junk", b"\x01not a record")
    with pytest.raises(KeyringError, match="malformed"):
        await make().by_id("agent.junk/1")


async def test_kv_bucket_is_opened_not_created(js: JetStreamContext) -> None:
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
    # Services never create the bucket: the admin provisions it.
    await js.delete_key_value(DATAKEYS_BUCKET)
    with pytest.raises(InfrastructureError, match="provisioned by the NATS admin"):
        await KvDataKeyStore.open(js)


def test_split_key_id() -> None:
    assert split_key_id("agent.a1/3") == ("agent.a1", 3)
    for bad in ("agent.a1", "agent.a1/", "/3", "agent.a1/x"):
        with pytest.raises(KeyringError, match="malformed data key id"):
            split_key_id(bad)


def test_split_key_id_bounds_the_generation_digits() -> None:
    """A key id comes from the wire: ``int()`` of more than 4300 digits raises a plain ValueError."""
    assert split_key_id("a/" + "9" * 18) == ("a", 10**18 - 1)
    for bad in ("a/" + "9" * 19, "a/" + "9" * 5000):
        with pytest.raises(KeyringError, match=r"malformed data key id .*at most 18"):
            split_key_id(bad)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_other_processes_forget_destroyed_and_rotated_keys(make: Make) -> None:
    reader, writer = make(), make()
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


async def test_the_notice_of_a_record_a_process_holds_keeps_it_cached(make: Make, store: DataKeyStore) -> None:
    """Every process sees every record's creation; the one it holds (created or read) stays cached, so the
    aggregate's next event needs no KV read. A later revision (rotation) is still forgotten."""
    creator, reader = make(), make()
    follower_tasks = [asyncio.create_task(dk.follow_changes()) for dk in (creator, reader)]
    try:
        await asyncio.sleep(0.1)  # the watches are up
        key = await creator.current("task.t9", new=True)
        assert (await reader.by_id(key.key_id)).key_id == key.key_id
        await asyncio.sleep(0.3)  # the creation notice has reached both
        reads = 0
        get = store.get

        async def counting_get(name: str) -> tuple[bytes, int] | None:
            nonlocal reads
            reads += 1
            return await get(name)

        store.get = counting_get  # type: ignore[method-assign]
        assert (await creator.current("task.t9")).key_id == key.key_id
        assert (await reader.by_id(key.key_id)).key_id == key.key_id
        assert reads == 0, "a cached key was dropped on the notice of its own record"
        new_id = await make().rotate("task.t9")

        async def rotated() -> bool:
            return (await creator.current("task.t9")).key_id == new_id

        assert await _until(rotated), "the creator kept sealing with the old generation"
    finally:
        for t in follower_tasks:
            t.cancel()
        for t in follower_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def test_the_cache_is_bounded_and_an_evicted_key_is_read_again(make: Make) -> None:
    dk = make()
    dk.max_cached = 3
    keys = [await dk.current(f"agent.b{i}", new=True) for i in range(5)]
    assert len(dk._cache) == 3
    again = await dk.by_id("agent.b0/1")  # evicted first, read back from the store
    nonce, ct = keys[0].encrypt(b"kept", b"aad")
    assert again.decrypt(nonce, ct, b"aad") == b"kept"
    assert len(dk._cache) == 3


async def test_a_key_another_process_created_is_opened_from_its_notice(make: Make, store: DataKeyStore) -> None:
    """The creation notice carries the sealed record: a reader opens its copy from it, with no store read; a
    destroyed key's notice drops it again, and a service with no copy keeps nothing."""
    writer, reader, other = make("scheduler"), make("sandbox-agent"), make("policy")
    tasks = [asyncio.create_task(dk.follow_changes()) for dk in (reader, other)]
    reads = 0
    get = store.get

    async def counting_get(name: str) -> tuple[bytes, int] | None:
        nonlocal reads
        reads += 1
        return await get(name)

    store.get = counting_get  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.1)  # the watches are up
        key = await writer.current("task.t7", new=True)
        assert await _until(lambda: _true("task.t7" in reader._announced)), "the creation notice never came"
        assert "task.t7" not in other._announced  # policy does not read tasks: nothing sealed to it
        opened = await reader.by_id(key.key_id)
        nonce, ct = key.encrypt(b"input", b"aad")
        assert opened.decrypt(nonce, ct, b"aad") == b"input"
        assert reads == 0, "the reader asked the store for a record its notice had brought"

        second = await writer.current("task.t8", new=True)
        assert await _until(lambda: _true("task.t8" in reader._announced))
        await writer.destroy("task.t8")
        assert await _until(lambda: _true("task.t8" not in reader._announced)), "a destroyed record was kept"
        with pytest.raises(DataKeyDestroyed):
            await reader.by_id(second.key_id)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def _true(value: bool) -> bool:
    return value


async def test_a_follower_given_types_is_sent_the_records_of_those_types_only(store: DataKeyStore) -> None:
    """The per-task keys are not sent to a service that can hold none of them (the server filters the KV)."""
    seen: list[tuple[str, int]] = []

    async def follow() -> None:
        async for name, revision, _ in store.records(("task", "memory")):
            seen.append((name, revision))

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.1)  # the watch is up
        for name in ("agent.n1", "task.n1", "execution.n1", "memory.n1", "taskx.n1"):
            assert await store.create(name, b"sealed") > 0
        await store.destroy("task.n1")
        await store.create("memory.n2", b"sealed")
        assert await _until(lambda: _true(len(seen) >= 4)), f"notices missing: {seen}"
        await asyncio.sleep(0.1)  # nothing else arrives
        assert [name for name, _ in seen] == ["task.n1", "memory.n1", "task.n1", "memory.n2"]
        assert seen[2][1] == 0  # the destruction
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
