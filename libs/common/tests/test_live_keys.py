"""Key registry changes reach running services over the REGISTRY stream (real nats-server, no restart)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeyRecord, DataKeys, KvDataKeyStore
from symbi_common.envelope import ZERO_HASH
from symbi_common.errors import KeyRevoked, KeyringError, RegistryRollback, SigningKeyRefused
from symbi_common.events import Event, EventCodec
from symbi_common.key_material import load_signer, load_wrap_key, read_key_file, write_key_file
from symbi_common.keyfiles import (
    default_operator_dir,
    publish_registry,
    revoke_key,
    rotate_service_key,
    rotate_wrap_key,
)
from symbi_common.keyring import KeyRegistry
from symbi_common.kv_keys import kv_keys
from symbi_common.ordered_pull import OrderedPull
from symbi_common.registry_changes import with_revocation, with_service_key
from symbi_common.registry_stream import (
    REGISTRY_SUBJECT,
    SignedRegistry,
    check_history,
    encode_signed,
    publish,
    read_history,
    read_signed_files,
)
from symbi_common.sealing import NEW_AGGREGATE, seal
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings
from symbi_fixtures.key_rotation import eventually


class Noted(Event, tag="test.live_noted"):
    text: str


codec: EventCodec[Event] = EventCodec([Noted])


@pytest.fixture
async def services(nats_url: str, keys_dir: Path) -> AsyncIterator[dict[str, ServiceRuntime]]:
    """Running lifecycle and scheduler runtimes (no database) on the test's server and keyring."""
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_POLICY__ENFORCEMENT": "allow-all"}
    runtimes = {
        name: ServiceRuntime(name, load_settings(env=env), use_database=False) for name in ("lifecycle", "scheduler")
    }
    for rt in runtimes.values():
        await rt.start()
    try:
        yield runtimes
    finally:
        for rt in runtimes.values():
            await rt.stop()


async def _publish(nc: NatsClient, keys_dir: Path) -> int | None:
    return await publish(nc, read_signed_files(keys_dir), read_key_file(keys_dir / "root.pub"))


async def test_rotation_and_revocation_apply_to_running_services(
    services: dict[str, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    lifecycle, scheduler = services["lifecycle"], services["scheduler"]
    told: list[str] = []
    lifecycle.on_signer_change(lambda signer: told.append(signer.key_id))
    first_version = scheduler.registry.version
    before_rotation = read_signed_files(keys_dir)
    old = lifecycle.store.signer
    agg = uuid.uuid4().hex[:12]
    (first,) = await lifecycle.store.append("agent", agg, [Noted(text="by the old key")], codec, expected=NEW_AGGREGATE)

    # Rotation: the new private key is in lifecycle's directory, the version goes out on REGISTRY.
    new_key = rotate_service_key(keys_dir, "lifecycle")
    assert await _publish(provisioned, keys_dir) == first_version + 1
    await eventually(lambda: lifecycle.store.signer.key_id == new_key.key_id, "lifecycle signs with its new key")
    await eventually(lambda: scheduler.registry.version == first_version + 1, "the scheduler has the new version")
    assert lifecycle.snapshots.signer.key_id == new_key.key_id
    assert told == [new_key.key_id]
    (second,) = await lifecycle.store.append("agent", agg, [Noted(text="by the new key")], codec, expected=first.tip)
    assert second.header.signing_key_id == new_key.key_id != old.key_id
    # Another service verifies both with the registry it now holds (before, the new key was unknown to it).
    loaded = await scheduler.store.load("agent", agg, codec)
    assert [r.header.signing_key_id for r in loaded] == [old.key_id, new_key.key_id]

    # Revocation after the last event the old key signed: anything it signs later is refused.
    revoke_key(keys_dir, old.key_id, after_sequence=second.sequence)
    await _publish(provisioned, keys_dir)
    await eventually(lambda: scheduler.registry.version == first_version + 2, "the scheduler has the revocation")
    forged_agg = uuid.uuid4().hex[:12]
    data_key = await lifecycle.datakeys.current(f"agent.{forged_agg}")
    forged, _ = seal(
        signer=old, producer="lifecycle", data_key=data_key, aggregate_type="agent", aggregate_id=forged_agg,
        aggregate_version=1, event_type="test.live_noted", schema_version=1,
        payload=codec.encode(Noted(text="signed with the stolen old key")), prev_hash=ZERO_HASH,
    )  # fmt: skip
    await provisioned.jetstream().publish(f"evt.agent.{forged_agg}", forged)
    with pytest.raises(KeyRevoked):
        await scheduler.store.load("agent", forged_agg, codec)
    with pytest.raises(KeyRevoked):
        await lifecycle.store.load("agent", forged_agg, codec)
    assert len(await scheduler.store.load("agent", agg, codec)) == 2  # signed before the cut-off: still valid

    # A rollback (the older, genuinely signed version republished) and a forgery are refused and logged;
    # the services keep the version they hold.
    js = provisioned.jetstream()
    await js.publish(REGISTRY_SUBJECT, encode_signed(before_rotation))
    forger = Signer.generate()
    await js.publish(REGISTRY_SUBJECT, encode_signed(SignedRegistry(b"{}", forger.sign(b"{}"))))
    for rt in (lifecycle, scheduler):
        await eventually(lambda rt=rt: sum("key registry" in e for e in rt.recent_errors) >= 2, "both refusals noted")
        assert any("not newer than v" in e for e in rt.recent_errors), rt.recent_errors
        assert any("not signed by the pinned root key" in e for e in rt.recent_errors), rt.recent_errors
        assert rt.registry.version == first_version + 2
    with pytest.raises(RegistryRollback) as rolled:
        scheduler.registry.advance(
            before_rotation.registry, before_rotation.signature, read_key_file(keys_dir / "root.pub")
        )
    assert (rolled.value.offered, rolled.value.current) == (first_version, first_version + 2)
    with pytest.raises(RegistryRollback):  # publishing refuses to append an older version itself
        await publish(provisioned, before_rotation, read_key_file(keys_dir / "root.pub"))

    # The stream is the registry's audit trail: every version, the rollback and the forgery flagged.
    history = check_history(await read_history(provisioned), read_key_file(keys_dir / "root.pub"))
    assert [(h.version, h.problem is None) for h in history][:2] == [
        (first_version + 1, True),
        (first_version + 2, True),
    ]
    assert history[0].changes[-1].kind == "rotate"  # the first version on the stream carries every change so far
    assert [(c.kind, c.key_id, c.after_sequence) for c in history[1].changes] == [
        ("revoke", old.key_id, second.sequence)
    ]
    assert "rollback" in (history[2].problem or "")
    assert "not signed by the pinned root key" in (history[3].problem or "")


async def test_a_revoked_active_key_stops_signing_until_its_replacement_arrives(
    services: dict[str, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    scheduler = services["scheduler"]
    current = scheduler.store.signer
    root = load_signer(default_operator_dir(keys_dir) / "root.key")
    # Revoked without a replacement in the key directory yet (the operator delivers it separately).
    doc = with_revocation(KeyRegistry.load(keys_dir).document, current.key_id, after_sequence=None)
    publish_registry(keys_dir, root, doc)
    await _publish(provisioned, keys_dir)
    await eventually(lambda: scheduler.keys.waiting_for_key, "the scheduler notices it has no usable key")
    with pytest.raises(SigningKeyRefused):
        await scheduler.store.append("task", uuid.uuid4().hex[:12], [Noted(text="x")], codec, expected=NEW_AGGREGATE)

    # The replacement: a new active key in the registry, its private key in the scheduler's directory
    # (here after the version: the service keeps looking for it).
    replacement = Signer.generate()
    wrap_public = next(k.wrap_public_key for k in doc.keys if k.key_id == current.key_id)
    assert wrap_public is not None
    publish_registry(keys_dir, root, with_service_key(doc, "scheduler", replacement, wrap_public, kind="rotate"))
    await _publish(provisioned, keys_dir)
    await asyncio.sleep(0.3)
    assert scheduler.keys.waiting_for_key
    write_key_file(keys_dir / "scheduler" / "signing.key", replacement.seed(), private=True)
    await eventually(lambda: scheduler.store.signer.key_id == replacement.key_id, "the scheduler signs again")
    assert not scheduler.keys.waiting_for_key
    (recorded,) = await scheduler.store.append(
        "task", uuid.uuid4().hex[:12], [Noted(text="y")], codec, expected=NEW_AGGREGATE
    )
    assert recorded.header.signing_key_id == replacement.key_id


async def _records(js: JetStreamContext) -> dict[str, DataKeyRecord]:
    kv = await js.key_value("DATAKEYS")
    out = {}
    for name in await kv_keys(js, kv, "DATAKEYS"):
        entry = await kv.get(name)
        if entry.value:
            out[name] = msgspec.msgpack.decode(entry.value, type=DataKeyRecord)
    return out


async def test_a_rotated_wrap_key_is_re_sealed_to_and_the_old_one_opens_nothing_current(
    services: dict[str, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    lifecycle, scheduler = services["lifecycle"], services["scheduler"]
    js = provisioned.jetstream()
    agent, task = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    # Data the scheduler reads: an agent (written by lifecycle) and a task of its own, two data key generations.
    await lifecycle.store.append("agent", agent, [Noted(text="agent data")], codec, expected=NEW_AGGREGATE)
    (t1,) = await scheduler.store.append("task", task, [Noted(text="task data 1")], codec, expected=NEW_AGGREGATE)
    await scheduler.datakeys.rotate(f"task.{task}")
    await scheduler.store.append("task", task, [Noted(text="task data 2")], codec, expected=t1.tip)
    old_wrap = load_wrap_key(keys_dir / "scheduler" / "wrap.key")
    assert any(old_wrap.key_id in copies for r in (await _records(js)).values() for copies in r.generations.values())

    new_id = rotate_wrap_key(keys_dir, "scheduler")
    assert (keys_dir / "scheduler" / "wrap.old.key").exists()
    with pytest.raises(KeyringError, match="has not re-sealed"):  # not again before the service is done
        rotate_wrap_key(keys_dir, "scheduler")
    await _publish(provisioned, keys_dir)

    def old_key_gone() -> bool:
        return not (keys_dir / "scheduler" / "wrap.old.key").exists()

    await eventually(old_key_gone, "the scheduler re-sealed its data keys and deleted wrap.old.key")
    assert scheduler.datakeys.wrap_key_id == new_id

    async def resealed() -> bool:
        records = await _records(js)
        return all(old_wrap.key_id not in c for r in records.values() for c in r.generations.values())

    deadline = asyncio.get_running_loop().time() + 10
    while not await resealed():  # lifecycle re-seals the agent's data key from its own copy
        assert asyncio.get_running_loop().time() < deadline, await _records(js)
        await asyncio.sleep(0.05)
    records = await _records(js)
    assert {f"agent.{agent}", f"task.{task}"} <= set(records)
    for record in records.values():
        for copies in record.generations.values():
            assert new_id in copies or not copies.keys() & {new_id, old_wrap.key_id}
            assert all(old_wrap.unseal(sealed) is None for sealed in copies.values())  # opens nothing current
    assert set(records[f"task.{task}"].generations) == {1, 2}

    # The scheduler still reads everything, with the new wrap key alone (as after a restart).
    fresh = DataKeys(
        await KvDataKeyStore.open(js),
        load_wrap_key(keys_dir / "scheduler" / "wrap.key"),
        scheduler.registry,
        service="scheduler",
    )
    for kid in (f"agent.{agent}/1", f"task.{task}/1", f"task.{task}/2"):
        await fresh.by_id(kid)
    scheduler.datakeys.forget(f"task.{task}")
    scheduler.datakeys.forget(f"agent.{agent}")
    assert [r.event.text for r in await scheduler.store.load("task", task, codec)] == ["task data 1", "task data 2"]  # type: ignore[attr-defined]
    assert [r.event.text for r in await scheduler.store.load("agent", agent, codec)] == ["agent data"]  # type: ignore[attr-defined]
    # New data keys are sealed to the new wrap key.
    other = uuid.uuid4().hex[:12]
    await lifecycle.store.append("agent", other, [Noted(text="after")], codec, expected=NEW_AGGREGATE)
    assert new_id in (await _records(js))[f"agent.{other}"].generations[1]


async def test_a_service_down_during_its_wrap_rotation_re_seals_when_it_starts(
    services: dict[str, ServiceRuntime], provisioned: NatsClient, keys_dir: Path
) -> None:
    scheduler = services["scheduler"]
    js = provisioned.jetstream()
    task = uuid.uuid4().hex[:12]
    await scheduler.store.append("task", task, [Noted(text="before")], codec, expected=NEW_AGGREGATE)
    old_wrap = load_wrap_key(keys_dir / "scheduler" / "wrap.key")
    await scheduler.stop()

    new_id = rotate_wrap_key(keys_dir, "scheduler")
    await _publish(provisioned, keys_dir)
    await asyncio.sleep(0.3)
    assert old_wrap.key_id in (await _records(js))[f"task.{task}"].generations[1]  # nobody re-sealed it yet

    restarted = ServiceRuntime("scheduler", scheduler.settings, use_database=False)
    services["scheduler"] = restarted  # stopped by the fixture
    await restarted.start()
    await eventually(lambda: not (keys_dir / "scheduler" / "wrap.old.key").exists(), "wrap.old.key deleted")
    copies = (await _records(js))[f"task.{task}"].generations[1]
    assert new_id in copies
    assert old_wrap.key_id not in copies
    assert all(old_wrap.unseal(sealed) is None for sealed in copies.values())
    assert [r.event.text for r in await restarted.store.load("task", task, codec)] == ["before"]  # type: ignore[attr-defined]


async def test_the_key_followers_start_again_after_a_failure(
    nats_url: str, keys_dir: Path, provisioned: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry and data key followers of a service fail to start once (NATS not answering): each starts
    again, so a revocation and a key destroyed afterwards still reach the service. Before, each follower
    ended for good, and the service trusted revoked keys and opened destroyed data keys until restarted."""
    opened, failed = OrderedPull.open, []

    async def fails_once(self: OrderedPull) -> OrderedPull:
        if self.stream in ("REGISTRY", "KV_DATAKEYS") and self.stream not in failed:
            failed.append(self.stream)
            raise nats.errors.TimeoutError
        return await opened(self)

    monkeypatch.setattr(OrderedPull, "open", fails_once)
    env = {"SYMBI_NATS_URL": nats_url, "SYMBI_KEYS_DIR": str(keys_dir), "SYMBI_POLICY__ENFORCEMENT": "allow-all"}
    rt = ServiceRuntime("scheduler", load_settings(env=env), use_database=False)
    await rt.start()
    try:
        await eventually(lambda: sorted(failed) == ["KV_DATAKEYS", "REGISTRY"], "both followers failed once")
        key = await rt.datakeys.current("task.t-restart")
        other = DataKeys(
            await KvDataKeyStore.open(provisioned.jetstream()),
            load_wrap_key(keys_dir / "scheduler" / "wrap.key"),
            rt.registry,
            service="scheduler",
        )
        await asyncio.sleep(0.5)  # (the data key follower's first retry is 0.2 s after its failure)
        await other.destroy("task.t-restart")
        await eventually(lambda: "task.t-restart" not in rt.datakeys._cache, "the destroyed key is forgotten")
        with pytest.raises(KeyringError):
            await rt.datakeys.by_id(key.key_id)
        lifecycle_key = rt.registry.active_key("lifecycle")
        assert lifecycle_key is not None
        revoke_key(keys_dir, lifecycle_key.key_id, after_sequence=None)
        await _publish(provisioned, keys_dir)
        await eventually(lambda: rt.registry.is_revoked(lifecycle_key.key_id), "the revocation is applied")
    finally:
        await rt.stop()
