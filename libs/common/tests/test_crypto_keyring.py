"""Crypto primitives, key files, the keyring and the signed key registry."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import msgspec
import pytest
from symbi_common.crypto import AeadKey, Signer, Verifier, key_id_for
from symbi_common.errors import KeyringError, RegistrySignatureInvalid, UnauthorisedSigner, UnknownSigningKey
from symbi_common.keyring import (
    REGISTRY_FILE,
    REGISTRY_SIG_FILE,
    SERVICE_SUBJECTS,
    KeyRegistry,
    init_keyring,
    issue_registry,
    load_master_key,
    load_signer,
    read_key_file,
    subject_matches,
    write_key_file,
)

# --- primitives ----------------------------------------------------------------------------------


def test_signer_signs_and_hides_its_key() -> None:
    signer = Signer.generate()
    sig = signer.sign(b"message")
    assert len(sig) == 64
    verifier = Verifier(signer.public_key)
    assert verifier.key_id == signer.key_id == key_id_for(signer.public_key)
    assert verifier.verify(b"message", sig)
    assert not verifier.verify(b"messagE", sig)
    assert not verifier.verify(b"message", bytes(64))
    assert not verifier.verify(b"message", b"short")
    assert not Verifier(Signer.generate().public_key).verify(b"message", sig)
    assert Signer(signer.seed()).public_key == signer.public_key
    assert signer.seed().hex() not in repr(signer)
    assert repr(signer) == f"Signer(key_id={signer.key_id!r})"
    with pytest.raises(ValueError, match="32 bytes"):
        Signer(b"short")


def test_aead_round_trip_and_failures() -> None:
    key = AeadKey("k/1", bytes(range(32)))
    nonce, ct = key.encrypt(b"secret", b"aad")
    assert len(nonce) == 12
    assert key.decrypt(nonce, ct, b"aad") == b"secret"
    assert key.decrypt(nonce, ct, b"other aad") is None
    assert key.decrypt(bytes(12), ct, b"aad") is None
    assert key.decrypt(nonce, ct[:-1] + bytes([ct[-1] ^ 1]), b"aad") is None
    assert AeadKey("k/2", bytes(32)).decrypt(nonce, ct, b"aad") is None
    assert key.decrypt(b"bad nonce", ct, b"aad") is None
    assert repr(key) == "AeadKey(key_id='k/1')"
    with pytest.raises(ValueError, match="32 bytes"):
        AeadKey("k", bytes(16))


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("evt.agent.>", "evt.agent.a1", True),
        ("evt.agent.>", "evt.agent.a1.b", True),
        ("evt.agent.>", "evt.agent", False),
        ("evt.agent.>", "evt.agents.a1", False),
        ("evt.*.a1", "evt.agent.a1", True),
        ("evt.*.a1", "evt.agent.a2", False),
        ("evt.agent.a1", "evt.agent.a1", True),
        ("evt.agent.a1", "evt.agent.a1.x", False),
        ("evt.agent.a1.x", "evt.agent.a1", False),
    ],
)
def test_subject_matches(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


# --- key files and keyring -----------------------------------------------------------------------


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.key"
    write_key_file(path, b"\x01" * 32, private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == b"\x01" * 32
    with pytest.raises(KeyringError, match="does not exist"):
        read_key_file(tmp_path / "missing.key")
    (tmp_path / "bad.key").write_text("not base64 !!!")
    with pytest.raises(KeyringError, match="not valid base64"):
        read_key_file(tmp_path / "bad.key")
    write_key_file(tmp_path / "short.key", b"\x01" * 8, private=True)
    with pytest.raises(KeyringError, match="32-byte Ed25519 seed"):
        load_signer(tmp_path / "short.key")
    with pytest.raises(KeyringError, match="32-byte AES-256 key"):
        load_master_key(tmp_path / "short.key")


def test_init_keyring_creates_once_and_keeps_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    created = init_keyring(keys)
    assert set(created) >= {"root.key", "master.key", REGISTRY_FILE, *(f"{s}.key" for s in SERVICE_SUBJECTS)}
    for name in ("root.key", "master.key", "lifecycle.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    assert init_keyring(keys) == []
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before
    # A missing service key is added and the registry re-issued; existing keys stay.
    (keys / "audit.key").unlink()
    assert init_keyring(keys) == ["audit.key", REGISTRY_FILE]
    assert (keys / "lifecycle.key").read_bytes() == before["lifecycle.key"]
    assert (keys / "audit.key").read_bytes() != before["audit.key"]
    registry = KeyRegistry.load(keys)
    assert registry.service_of(load_signer(keys / "audit.key").key_id) == "audit"


def test_registry_authorises_by_subject(keys_dir: Path, registry: KeyRegistry) -> None:
    lifecycle = load_signer(keys_dir / "lifecycle.key")
    policy = load_signer(keys_dir / "policy.key")
    assert registry.authorise(lifecycle.key_id, "evt.agent.a1").key_id == lifecycle.key_id
    assert registry.authorise(policy.key_id, "evt.policy.p1").key_id == policy.key_id
    assert registry.service_of(policy.key_id) == "policy"
    assert registry.service_of("ed25519:nope") is None
    with pytest.raises(UnauthorisedSigner, match=r"of service policy may not write evt\.agent\.x") as exc:
        registry.authorise(policy.key_id, "evt.agent.x", sequence=3)
    assert exc.value.sequence == 3
    with pytest.raises(UnauthorisedSigner):
        registry.authorise(lifecycle.key_id, "evt.task.t1")
    stranger = Signer.generate()
    with pytest.raises(UnknownSigningKey, match=stranger.key_id):
        registry.authorise(stranger.key_id, "evt.agent.a1")
    with pytest.raises(UnknownSigningKey):
        registry.verifier(stranger.key_id)


def test_revoked_key_is_unauthorised(keys_dir: Path) -> None:
    root = load_signer(keys_dir / "root.key")
    doc = issue_registry(keys_dir, root, ["lifecycle"])
    revoked = msgspec.structs.replace(doc, keys=[msgspec.structs.replace(doc.keys[0], status="revoked")])
    data = msgspec.json.encode(revoked)
    registry = KeyRegistry.from_signed(data, root.sign(data), root.public_key)
    with pytest.raises(UnauthorisedSigner):
        registry.authorise(doc.keys[0].key_id, "evt.agent.a1")


def test_registry_edited_after_signing_is_refused(keys_dir: Path) -> None:
    path = keys_dir / REGISTRY_FILE
    doc = json.loads(path.read_bytes())
    policy_key = next(k for k in doc["keys"] if k["service"] == "policy")
    policy_key["subjects"].append("evt.agent.>")  # sneak in a permission
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(RegistrySignatureInvalid, match="not signed by the pinned root key"):
        KeyRegistry.load(keys_dir)


def test_registry_one_byte_changed_is_refused(keys_dir: Path) -> None:
    path = keys_dir / REGISTRY_FILE
    data = path.read_bytes()
    path.write_bytes(data + b" ")  # even whitespace: the signature covers the exact bytes
    with pytest.raises(RegistrySignatureInvalid):
        KeyRegistry.load(keys_dir)


def test_registry_with_wrong_root_is_refused(keys_dir: Path) -> None:
    other_root = Signer.generate()
    # Pinned to another root key than the one that signed.
    with pytest.raises(RegistrySignatureInvalid, match="not signed by the pinned root key"):
        KeyRegistry.load(keys_dir, root_public_key=other_root.public_key)
    # Re-signed by another root: the pinned root key (root.pub) refuses it.
    data = (keys_dir / REGISTRY_FILE).read_bytes()
    (keys_dir / REGISTRY_SIG_FILE).write_bytes(base64.b64encode(other_root.sign(data)))
    with pytest.raises(RegistrySignatureInvalid, match="not signed by the pinned root key"):
        KeyRegistry.load(keys_dir)
    # Signed by the pinned key, but the document names another root key.
    with pytest.raises(RegistrySignatureInvalid, match="names another root key"):
        KeyRegistry.load(keys_dir, root_public_key=other_root.public_key)


def test_registry_missing_or_malformed(tmp_path: Path, keys_dir: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        KeyRegistry.load(tmp_path / "nowhere")
    (keys_dir / REGISTRY_SIG_FILE).unlink()
    with pytest.raises(KeyringError, match="no key registry"):
        KeyRegistry.load(keys_dir)
    root = load_signer(keys_dir / "root.key")
    with pytest.raises(KeyringError, match="malformed"):
        KeyRegistry.from_signed(b"{nope", root.sign(b"{nope"), root.public_key)
