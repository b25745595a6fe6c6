"""Sealing and opening events (pure, no I/O): round trips, tamper detection, one typed error per failure."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.crypto import AeadKey, Signer
from symbi_common.envelope import ZERO_HASH, SealedEvent, decode_header, decode_sealed, encode_header, encode_sealed
from symbi_common.errors import (
    BadSignature,
    BrokenChain,
    DecryptionFailed,
    IntegrityError,
    MalformedEvent,
    SubjectMismatch,
    UnauthorisedSigner,
    UnknownSigningKey,
    VersionGap,
)
from symbi_common.key_material import load_signer
from symbi_common.keyfiles import init_keyring
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import NEW_AGGREGATE, ChainTip, OpenedEvent, check_link, decrypt, open_envelope, seal

SUBJECT = "evt.agent.a1"


class Keys:
    """One keyring for the whole module: Hypothesis tests cannot use function-scoped fixtures."""

    def __init__(self, path: Path) -> None:
        init_keyring(path)
        self.registry = KeyRegistry.load(path)
        self.lifecycle = load_signer(path / "lifecycle" / "signing.key")
        self.policy = load_signer(path / "policy" / "signing.key")
        self.data_key = AeadKey("agent.a1/1", os.urandom(32))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def make(
    keys: Keys,
    *,
    signer: Signer | None = None,
    data_key: AeadKey | None = None,
    aggregate_type: str = "agent",
    aggregate_id: str = "a1",
    version: int = 1,
    prev_hash: bytes = ZERO_HASH,
    payload: bytes = b"payload",
    producer: str = "lifecycle",
) -> bytes:
    data, _ = seal(
        signer=signer or keys.lifecycle,
        producer=producer,
        data_key=data_key or keys.data_key,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        aggregate_version=version,
        event_type="thing.happened",
        schema_version=1,
        payload=payload,
        prev_hash=prev_hash,
    )
    return data


def verify(keys: Keys, data: bytes, *, subject: str = SUBJECT, prev: ChainTip = NEW_AGGREGATE) -> bytes:
    """Everything a reader does with one stored event; returns the plaintext."""
    opened = open_envelope(data, subject=subject, sequence=prev.sequence + 1, registry=keys.registry)
    check_link(prev, opened)
    return decrypt(opened, keys.data_key)


def resign(keys: Keys, header: bytes, ciphertext: bytes, signer: Signer | None = None) -> bytes:
    """Stored bytes for a (tampered) header and ciphertext, validly signed: only decryption can tell."""
    from symbi_common.envelope import signed_message

    signature = (signer or keys.lifecycle).sign(signed_message(header, ciphertext))
    return encode_sealed(SealedEvent(header, ciphertext, signature))


# --- properties ----------------------------------------------------------------------------------

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=4096),
    aggregate_id=ids,
    version=st.integers(1, 2**40),
    prev=st.binary(min_size=32, max_size=32),
)
def test_seal_open_round_trip(keys: Keys, payload: bytes, aggregate_id: str, version: int, prev: bytes) -> None:
    data = make(keys, aggregate_id=aggregate_id, version=version, prev_hash=prev, payload=payload)
    subject = f"evt.agent.{aggregate_id}"
    opened = open_envelope(data, subject=subject, sequence=9, registry=keys.registry)
    check_link(ChainTip(8, version - 1, prev), opened)
    assert decrypt(opened, keys.data_key) == payload
    assert opened.header.aggregate_id == aggregate_id
    assert opened.header.aggregate_version == version
    assert opened.tip == ChainTip(9, version, opened.hash)


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=256), data=st.data())
def test_any_single_byte_flip_is_detected(keys: Keys, payload: bytes, data: st.DataObject) -> None:
    stored = make(keys, payload=payload)
    index = data.draw(st.integers(0, len(stored) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = bytearray(stored)
    tampered[index] ^= flip
    with pytest.raises(IntegrityError):  # MalformedEvent is an IntegrityError too
        verify(keys, bytes(tampered))


def test_every_byte_flip_of_one_event_is_detected(keys: Keys) -> None:
    """Exhaustive over positions for one event, with the bit patterns that turn msgpack type markers."""
    stored = make(keys, payload=b"hello world")
    for index in range(len(stored)):
        for flip in (0x01, 0x02, 0x04, 0x08, 0x10, 0x1D, 0x20, 0x40, 0x80, 0xFF):
            tampered = bytearray(stored)
            tampered[index] ^= flip
            with pytest.raises(IntegrityError):
                verify(keys, bytes(tampered))


# --- one typed error per failure -----------------------------------------------------------------


def test_valid_event_verifies(keys: Keys) -> None:
    assert verify(keys, make(keys)) == b"payload"


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"garbage bytes", os.urandom(300)])
def test_garbage_is_malformed(keys: Keys, garbage: bytes) -> None:
    with pytest.raises(MalformedEvent):
        verify(keys, garbage)


def test_subject_mismatch(keys: Keys) -> None:
    data = make(keys, aggregate_id="a2")
    with pytest.raises(SubjectMismatch, match=r"header names evt\.agent\.a2"):
        verify(keys, data, subject=SUBJECT)


def test_unknown_signing_key(keys: Keys) -> None:
    with pytest.raises(UnknownSigningKey):
        verify(keys, make(keys, signer=Signer.generate()))


def test_unauthorised_signer(keys: Keys) -> None:
    """The policy service's (registered) key may not write agent events."""
    with pytest.raises(UnauthorisedSigner, match=r"of service policy may not write evt\.agent\.a1"):
        verify(keys, make(keys, signer=keys.policy))


def test_producer_must_be_the_signing_key_service(keys: Keys) -> None:
    """The owner's own key, but the header claims another producer: refused, not misattributed."""
    with pytest.raises(UnauthorisedSigner, match="names producer 'scheduler' but is signed by a key of lifecycle"):
        verify(keys, make(keys, producer="scheduler"))


def test_bad_signature(keys: Keys) -> None:
    sealed = decode_sealed(make(keys))
    forged = bytes([sealed.signature[0] ^ 1]) + sealed.signature[1:]
    with pytest.raises(BadSignature):
        verify(keys, encode_sealed(SealedEvent(sealed.header, sealed.ciphertext, forged)))
    # Signed by the lifecycle key over other bytes than the stored ones.
    other = decode_sealed(make(keys, payload=b"other"))
    with pytest.raises(BadSignature):
        verify(keys, encode_sealed(SealedEvent(sealed.header, sealed.ciphertext, other.signature)))


def test_broken_chain(keys: Keys) -> None:
    first = make(keys)
    first_opened = open_envelope(first, subject=SUBJECT, sequence=1, registry=keys.registry)
    second = make(keys, version=2, prev_hash=b"\x01" * 32)
    with pytest.raises(BrokenChain, match="prev_hash"):
        verify(keys, second, prev=first_opened.tip)
    # The right link verifies.
    assert verify(keys, make(keys, version=2, prev_hash=first_opened.hash), prev=first_opened.tip) == b"payload"


def test_version_gap(keys: Keys) -> None:
    first = open_envelope(make(keys), subject=SUBJECT, sequence=1, registry=keys.registry)
    with pytest.raises(VersionGap, match="version 3 does not follow 1"):
        verify(keys, make(keys, version=3, prev_hash=first.hash), prev=first.tip)
    with pytest.raises(VersionGap):  # a replayed first event
        verify(keys, make(keys, version=1, prev_hash=first.hash), prev=first.tip)


def test_decryption_failed_ciphertext_tampered(keys: Keys) -> None:
    sealed = decode_sealed(make(keys))
    ct = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(DecryptionFailed):
        verify(keys, resign(keys, sealed.header, ct))


def test_decryption_failed_header_tampered(keys: Keys) -> None:
    """The header is the AES-GCM associated data: changing it breaks decryption even if re-signed."""
    sealed = decode_sealed(make(keys))
    header = msgspec.structs.replace(decode_header(sealed.header), event_type="thing.other")
    with pytest.raises(DecryptionFailed):
        verify(keys, resign(keys, encode_header(header), sealed.ciphertext))


def test_decryption_failed_wrong_data_key(keys: Keys) -> None:
    data = make(keys, data_key=AeadKey("agent.a1/1", os.urandom(32)))
    with pytest.raises(DecryptionFailed, match=r"does not decrypt with data key agent\.a1/1"):
        verify(keys, data)


def test_errors_locate_the_event(keys: Keys) -> None:
    data = make(keys, signer=keys.policy)
    with pytest.raises(UnauthorisedSigner) as exc:
        open_envelope(data, subject=SUBJECT, sequence=42, registry=keys.registry)
    assert (exc.value.sequence, exc.value.subject) == (42, SUBJECT)
    assert "stream sequence 42" in str(exc.value)


def test_opened_event_fields(keys: Keys) -> None:
    data = make(keys)
    opened = open_envelope(data, subject=SUBJECT, sequence=5, registry=keys.registry)
    assert isinstance(opened, OpenedEvent)
    assert opened.data == data
    assert opened.payload is None
    assert opened.header.producer == "lifecycle"
    assert opened.header.signing_key_id == keys.lifecycle.key_id
    assert opened.header.data_key_id == "agent.a1/1"
    # Every event gets its own id and nonce.
    other = open_envelope(make(keys), subject=SUBJECT, sequence=6, registry=keys.registry)
    assert other.header.event_id != opened.header.event_id
    assert other.header.nonce != opened.header.nonce
