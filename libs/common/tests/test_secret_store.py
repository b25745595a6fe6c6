"""The secrets store against a real JetStream: sealed at rest with its own key, versions, removal, permissions."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import AeadKey
from symbi_common.errors import KeyringError, ValidationError
from symbi_common.follower import Delivery, Follower
from symbi_common.nats_client import server_options, with_credentials
from symbi_common.natsauth import OPERATOR
from symbi_common.positions import MemoryPositions, Unit
from symbi_common.secret_records import (
    SecretCorrupt,
    bucket_key,
    check_name,
    decode_sealed,
    encode_sealed,
    name_of_bucket_key,
    open_secret,
    seal_secret,
)
from symbi_common.secret_source import SecretNotFound, SecretSource
from symbi_common.secret_store import (
    SECRETS_BUCKET,
    SECRETS_KEY_FILE,
    KvSecretStore,
    ensure_secrets_key,
    load_secrets_key,
)
from symbi_fixtures.messaging import DEPLOYMENT_PASSWORDS

VALUE = b"sk-live-7f3a9c1e5b2d4f6a8c0e"


@pytest.fixture
def secrets_key(keys_dir: Path) -> AeadKey:
    ensure_secrets_key(keys_dir, keys_dir.parent / "operator")
    return load_secrets_key(keys_dir.parent / "operator" / SECRETS_KEY_FILE)


async def test_set_get_list_remove_with_versions(provisioned: NatsClient, secrets_key: AeadKey) -> None:
    store = await KvSecretStore.open(provisioned, secrets_key)
    source: SecretSource = store  # the port the model gateway and the sandbox-agent read through
    with pytest.raises(SecretNotFound, match="symbi secrets set"):
        await source.get("providers/openai/api_key")

    first = await store.set("vault://providers/openai/api_key", VALUE, set_by="alice")
    assert (first.name, first.version, first.set_by, first.key_id) == (
        "providers/openai/api_key",
        1,
        "alice",
        secrets_key.key_id,
    )
    assert await source.get("providers/openai/api_key") == VALUE
    second = await store.set("providers/openai/api_key", b"rotated")
    assert second.version == 2
    assert second.revision > first.revision
    assert await store.get("providers/openai/api_key") == b"rotated"
    await store.set("webhooks/github.token", b"ghp-token")

    listed = await store.list()
    assert [(i.name, i.version) for i in listed] == [("providers/openai/api_key", 2), ("webhooks/github.token", 1)]
    assert b"rotated" not in repr(listed).encode()
    assert b"ghp-token" not in repr(listed).encode()

    assert await store.remove("webhooks/github.token") is not None
    assert await store.remove("webhooks/github.token") is None
    with pytest.raises(SecretNotFound):
        await store.get("webhooks/github.token")
    assert [i.name for i in await store.list()] == ["providers/openai/api_key"]
    # Set again after a removal: a fresh first version.
    assert (await store.set("webhooks/github.token", b"again")).version == 1


async def test_values_are_sealed_at_rest_and_bound_to_their_name(provisioned: NatsClient, secrets_key: AeadKey) -> None:
    js = provisioned.jetstream()
    store = await KvSecretStore.open(provisioned, secrets_key)
    await store.set("a/one", VALUE)
    await store.set("a/two", b"other value")
    kv = await js.key_value(SECRETS_BUCKET)
    stored = (await kv.get(bucket_key("a/one"))).value
    assert VALUE not in stored
    assert b"sk-live" not in stored

    # A ciphertext moved under another name does not open there (name and version are associated data).
    await kv.put(bucket_key("a/two"), stored)
    with pytest.raises(SecretCorrupt, match="sealed for 'a/one'"):
        await store.get("a/two")
    moved = decode_sealed(stored)
    renamed = encode_sealed(type(moved)(**{**{f: getattr(moved, f) for f in moved.__struct_fields__}, "name": "a/two"}))
    await kv.put(bucket_key("a/two"), renamed)
    with pytest.raises(SecretCorrupt, match="altered or moved"):
        await store.get("a/two")
    # Another key opens nothing, and says which key it would need.
    other = AeadKey("aes:other", b"\x01" * 32)
    with pytest.raises(SecretCorrupt, match="sealed with key"):
        await (await KvSecretStore.open(provisioned, other)).get("a/one")


@pytest.mark.parametrize("bad", ["", "UPPER", "a//b", "/a", "a/", "../etc", "a..b", "a b", "x" * 70])
def test_names_are_checked(bad: str) -> None:
    with pytest.raises(ValidationError):
        check_name(bad)


def test_bucket_keys_round_trip_and_foreign_keys_are_refused() -> None:
    for name in ("providers/openai/api_key", "a.b/c-d_e"):
        assert name_of_bucket_key(bucket_key(name)) == name
    with pytest.raises(ValidationError):
        name_of_bucket_key("not-hex")


async def test_empty_and_oversized_values_are_refused(provisioned: NatsClient, secrets_key: AeadKey) -> None:
    store = await KvSecretStore.open(provisioned, secrets_key)
    with pytest.raises(ValidationError, match="empty"):
        await store.set("a/b", b"")
    with pytest.raises(ValidationError, match="at most"):
        await store.set("a/b", b"x" * (64 * 1024 + 1))


def test_the_key_file_is_private_copied_to_readers_and_never_replaced(keys_dir: Path) -> None:
    operator = keys_dir.parent / "operator"
    created = ensure_secrets_key(keys_dir, operator)
    assert created == [str(operator / SECRETS_KEY_FILE), f"sandbox-agent/{SECRETS_KEY_FILE}"]
    for path in (operator / SECRETS_KEY_FILE, keys_dir / "sandbox-agent" / SECRETS_KEY_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (keys_dir / "scheduler" / SECRETS_KEY_FILE).exists()
    key = load_secrets_key(operator / SECRETS_KEY_FILE)
    assert load_secrets_key(keys_dir / "sandbox-agent" / SECRETS_KEY_FILE).key_id == key.key_id
    assert ensure_secrets_key(keys_dir, operator) == []
    (keys_dir / "sandbox-agent" / SECRETS_KEY_FILE).unlink()
    assert ensure_secrets_key(keys_dir, operator) == [f"sandbox-agent/{SECRETS_KEY_FILE}"]
    assert load_secrets_key(operator / SECRETS_KEY_FILE).key_id == key.key_id
    (operator / SECRETS_KEY_FILE).write_text("c2hvcnQ=\n")
    with pytest.raises(KeyringError, match="32-byte"):
        load_secrets_key(operator / SECRETS_KEY_FILE)


async def _as(url: str, user: str) -> NatsClient:
    return await nats.connect(
        **server_options(with_credentials(url, user, DEPLOYMENT_PASSWORDS[user])),
        allow_reconnect=False,
        connect_timeout=5,
        drain_timeout=5,
    )


async def _refused(attempt: Awaitable[object]) -> None:
    """The attempt fails: refused by permission (or by no answer within its timeout)."""
    with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
        await attempt


async def test_only_the_operator_writes_and_only_the_sandbox_agent_and_audit_read(
    secured_nats: str, secrets_key: AeadKey
) -> None:
    operator = await _as(secured_nats, OPERATOR)
    agent = await _as(secured_nats, "sandbox-agent")
    scheduler = await _as(secured_nats, "scheduler")
    try:
        await (await KvSecretStore.open(operator, secrets_key)).set("db/password", VALUE)
        listed = await (await KvSecretStore.open(operator, secrets_key)).list()
        assert [(i.name, i.version) for i in listed] == [("db/password", 1)]
        readers = await KvSecretStore.open(agent, secrets_key, timeout=2)
        assert await readers.get("db/password") == VALUE

        # The sandbox-agent reads but cannot write, nor remove; a service with no need cannot even read the sealed
        # entries. Each attempt is refused (no answer within its timeout): they are made at once.
        async def scheduler_reads() -> bytes:
            return await (await KvSecretStore.open(scheduler, secrets_key, timeout=2)).get("db/password")

        await asyncio.gather(
            _refused(readers.set("db/password", b"replaced by a compromised host")),
            _refused(readers.remove("db/password")),
            _refused(scheduler_reads()),
        )
        assert await (await KvSecretStore.open(operator, secrets_key)).get("db/password") == VALUE
        # The audit service reads the sealed entries (metadata; it holds no key), and follows the bucket's stream
        # as its secret-change recorder does.
        audit = await _as(secured_nats, "audit")
        try:
            kv = await audit.jetstream(timeout=2).key_value(SECRETS_BUCKET)
            assert decode_sealed((await kv.get(bucket_key("db/password"))).value).version == 1
            seen: list[str] = []

            async def collect(unit: Unit, deliveries: list[Delivery]) -> None:
                seen.extend(d.subject for d in deliveries)

            follower = Follower(
                audit.jetstream(timeout=2),
                service="audit",
                name="secrets",
                subjects=(f"$KV.{SECRETS_BUCKET}.>",),
                stream=f"KV_{SECRETS_BUCKET}",
                positions=MemoryPositions(),
                handler=collect,
            )
            running = asyncio.create_task(follower.run())
            try:
                assert await follower.wait_for(1, timeout=10)
            finally:
                await follower.stop()
                await asyncio.wait_for(running, 10)
            assert seen == [f"$KV.{SECRETS_BUCKET}.{bucket_key('db/password')}"]
        finally:
            await audit.drain()
    finally:
        for client in (operator, agent, scheduler):
            if not client.is_closed:
                await client.drain()


@settings(max_examples=200, deadline=None)
@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}(/[a-z0-9][a-z0-9_-]{0,10}){0,3}", fullmatch=True),
    value=st.binary(min_size=1, max_size=2048),
    version=st.integers(min_value=1, max_value=2**40),
)
def test_sealed_secrets_round_trip_and_never_hold_the_value_in_clear(name: str, value: bytes, version: int) -> None:
    key = AeadKey("aes:prop", b"\x07" * 32)
    sealed = seal_secret(key, name, version, value, set_at="2026-12-05T00:00:00Z", set_by="prop")
    stored = encode_sealed(sealed)
    assert open_secret(key, decode_sealed(stored)) == value
    assert name_of_bucket_key(bucket_key(name)) == name
    if len(value) >= 8:
        assert value not in stored
