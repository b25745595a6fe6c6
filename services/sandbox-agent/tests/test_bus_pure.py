"""The bus's pure parts: sealing and opening envelopes, send limits, agent identity keys (no I/O but a dict KV)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from symbi_common.crypto import AeadKey, Signer, Verifier
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_changes import with_revocation, with_service_key
from symbi_contracts.bus import ENVELOPE_DECODER, AgentKey, Meta, encode, valid_name
from symbi_sandbox_agent.bus.codec import Refused, check_signature, expired, open_payload, seal
from symbi_sandbox_agent.bus.identity import Identities, UnknownSender, derive
from symbi_sandbox_agent.bus.limits import RateLimiter, SendLimits

KEY = AeadKey("message.alice.bob/1", os.urandom(32))
ALICE = Signer.generate()
META = Meta(id="m1", kind="direct", sender="alice", sent_at=100.0, to="bob", classification="internal", size=5)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_a_sealed_body_opens_to_itself_through_the_wire_encoding(body: Any) -> None:
    envelope = seal(META, msgspec.json.encode(body), KEY, ALICE)
    wire = ENVELOPE_DECODER.decode(encode(envelope))
    check_signature(wire, Verifier(ALICE.public_key))
    assert open_payload(wire, KEY) == body


def test_changed_metadata_or_payload_or_another_key_is_refused() -> None:
    envelope = seal(META, b'"hello"', KEY, ALICE)
    verifier = Verifier(ALICE.public_key)
    rerouted = msgspec.structs.replace(envelope, meta=msgspec.structs.replace(META, to="mallory"))
    with pytest.raises(Refused) as refused:
        check_signature(rerouted, verifier)
    assert refused.value.reason == "bad_signature"
    flipped = bytes([envelope.ciphertext[0] ^ 1]) + envelope.ciphertext[1:]
    with pytest.raises(Refused, match="bad_signature"):
        check_signature(msgspec.structs.replace(envelope, ciphertext=flipped), verifier)
    with pytest.raises(Refused, match="bad_signature"):
        check_signature(envelope, Verifier(Signer.generate().public_key))
    # Metadata is the payload's associated data: re-signed metadata still does not open the old payload.
    with pytest.raises(Refused) as undecryptable:
        open_payload(rerouted, KEY)
    assert undecryptable.value.reason == "undecryptable"


def test_ttl_counts_from_sending_or_from_a_replay() -> None:
    short = msgspec.structs.replace(META, ttl_s=5.0)
    assert not expired(short, 104.0)
    assert expired(short, 106.0)
    assert not expired(short, 106.0, replayed_at=103.0)
    assert not expired(META, 1e12)  # no TTL: never


def test_rate_limits_refuse_with_the_wait_and_refill_over_time() -> None:
    limiter = RateLimiter(SendLimits(messages_per_s=2, bytes_per_s=1000))
    assert [limiter.take("a", 10, 0.0) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("a", 10, 0.0)
    assert wait == pytest.approx(0.5)
    assert limiter.take("b", 10, 0.0) == 0.0  # per agent
    assert limiter.take("a", 10, 0.5) == 0.0
    assert limiter.take("c", 900, 0.0) == 0.0
    assert limiter.take("c", 200, 0.0) == pytest.approx(0.1)  # bytes/s too


def test_agent_names_are_single_subject_tokens() -> None:
    assert valid_name("agent-1")
    assert not valid_name("a.b")
    assert not valid_name("a>")
    assert not valid_name("")
    assert not valid_name("x" * 65)


class DictKv:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> int:
        self.data[key] = value
        return len(self.data)

    async def get(self, key: str) -> Any:
        value = self.data.get(key)
        return None if value is None else type("Entry", (), {"value": value})()


async def test_agent_keys_are_derived_on_the_host_and_trusted_only_through_its_signature(
    registry: KeyRegistry, signer_for: Any
) -> None:
    host = signer_for("sandbox-agent")
    kv = DictKv()
    identities = Identities(kv, host, registry)
    alice = await identities.signer("alice")
    assert alice.public_key == derive(host, "alice").public_key != derive(host, "bob").public_key
    # Another process reading the bucket trusts the key through the host's signature.
    reader = Identities(kv, signer_for("sandbox-agent"), registry)
    assert (await reader.verifier("alice")).public_key == alice.public_key
    with pytest.raises(UnknownSender):
        await reader.verifier("nobody")
    # An entry vouched for by another service's key, or altered, is not trusted.
    other = signer_for("context")
    forged = Signer.generate()
    statement = b"symbi-agent-key-v1\0mallory\0" + forged.public_key
    kv.data["mallory"] = encode(
        AgentKey(
            agent_id="mallory",
            public_key=forged.public_key,
            host_key_id=other.key_id,
            host_signature=other.sign(statement),
        )
    )
    with pytest.raises(UnknownSender, match="not a host key"):
        await reader.verifier("mallory")
    entry = msgspec.json.decode(kv.data["alice"], type=AgentKey)
    kv.data["carol"] = encode(msgspec.structs.replace(entry, agent_id="carol"))
    with pytest.raises(UnknownSender, match="not signed by its host"):
        await reader.verifier("carol")


def test_an_agents_limits_are_the_tightest_of_host_definition_and_policy() -> None:
    from symbi_contracts.lifecycle.config import Messaging

    host = SendLimits(messages_per_s=100, bytes_per_s=1000)
    assert host.lowered(None) == host
    mine = host.lowered(Messaging(messages_per_s=5, bytes_per_s=10**9, max_message_bytes=50, queue_depth=7))
    assert (mine.messages_per_s, mine.bytes_per_s, mine.max_message_bytes, mine.queue_depth) == (5, 1000, 50, 7)
    capped = mine.lowered(None, {"messages_per_s": 2, "max_message_bytes": 500, "memory_mb": 1})
    assert (capped.messages_per_s, capped.max_message_bytes) == (2, 50)  # lowered, never raised
    limiter = RateLimiter(host)
    assert [limiter.take("a", 1, 0.0, capped) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a", 1, 0.0, capped) == pytest.approx(0.5)  # at the capped rate
    assert limiter.take("a", 1, 0.0) == pytest.approx(0.01)  # the host's rate again: it fills at 100/s
    assert limiter.take("a", 1, 0.01) == 0.0


def test_alternating_recipients_do_not_lift_a_policys_lower_cap() -> None:
    """One agent, two recipients: a policy caps messages to X at 1/s, those to Y run at the host's 1000/s.
    Sending Y, X, Y, X … for ten seconds gets about ten messages to X, not one per switch."""
    limiter = RateLimiter(SendLimits(messages_per_s=1000, bytes_per_s=10**9))
    capped = SendLimits(messages_per_s=1, bytes_per_s=10**9)
    to_x, now = 0, 0.0
    while now < 10.0:
        assert limiter.take("a", 1, now) == 0.0  # to Y
        if limiter.take("a", 1, now, capped) == 0.0:  # to X
            to_x += 1
        now += 0.002
    assert to_x <= 12, to_x


async def test_a_sender_key_is_trusted_only_while_the_host_key_that_vouched_for_it_is(
    registry: KeyRegistry, signer_for: Any, keys_dir: Path
) -> None:
    """A remembered sender key is dropped once its host key is revoked (before, it was trusted until the
    process restarted, so whoever held the revoked key could sign as the agent); and a signature the remembered
    key does not verify is checked against the key registered now (the host key rotated, and the agent's with it)."""
    root = load_signer(keys_dir.parent / "operator" / "root.key")

    def advance(doc: Any) -> None:
        data = msgspec.json.encode(doc)
        registry.advance(data, root.sign(data), root.public_key)

    host = signer_for("sandbox-agent")
    kv = DictKv()
    alice = await Identities(kv, host, registry).signer("alice")
    reader = Identities(kv, signer_for("sandbox-agent"), registry)
    meta = Meta(id="m1", kind="direct", sender="alice", sent_at=1.0, to="bob")
    key = AeadKey("message.alice.bob/1", os.urandom(32))
    await reader.check_signed(seal(meta, b"{}", key, alice))  # remembered from now on
    active = registry.active_key("sandbox-agent")
    assert active is not None
    assert active.wrap_public_key is not None
    advance(with_revocation(registry.document, host.key_id, after_sequence=None))
    with pytest.raises(UnknownSender, match="not a host key"):
        await reader.verifier("alice")
    with pytest.raises(Refused, match="unknown_sender_key"):
        await reader.check_signed(seal(meta, b"{}", key, alice))
    # A new host key: the agent's key changes with it and is registered again, and its messages are trusted.
    rotated = Signer.generate()
    advance(with_service_key(registry.document, "sandbox-agent", rotated, active.wrap_public_key))
    alice2 = await Identities(kv, rotated, registry).signer("alice")
    await reader.check_signed(seal(meta, b"{}", key, alice2))
    with pytest.raises(Refused, match="bad_signature"):
        await reader.check_signed(seal(meta, b"{}", key, alice))
