"""Crypto primitives, key files, the keyring and the signed key registry."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import msgspec
import pytest
from symbi_common.crypto import AeadKey, Signer, Verifier, WrapKey, key_id_for, seal_to
from symbi_common.entitlements import AGGREGATE_READERS, SERVICE_SUBJECTS, readers_of, subject_matches, writer_of
from symbi_common.errors import (
    KeyRevoked,
    KeyringError,
    RegistrySignatureInvalid,
    UnauthorisedSigner,
    UnknownSigningKey,
)
from symbi_common.key_material import load_signer, load_wrap_key, read_key_file, write_key_file
from symbi_common.keyfiles import init_keyring, load_service_keys, revoke_key, rotate_service_key
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_changes import with_revocation
from symbi_common.registry_document import REGISTRY_FILE, REGISTRY_SIG_FILE

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


def test_wrap_key_seals_to_one_holder_only() -> None:
    alice, bob = WrapKey.generate(), WrapKey.generate()
    sealed = seal_to(alice.public_key, b"data key")
    assert alice.unseal(sealed) == b"data key"
    assert bob.unseal(sealed) is None
    assert alice.unseal(sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert alice.unseal(b"short") is None
    assert WrapKey(alice.private_bytes()).key_id == alice.key_id
    assert alice.private_bytes().hex() not in repr(alice)


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
    with pytest.raises(KeyringError, match="32-byte X25519 key"):
        load_wrap_key(tmp_path / "short.key")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_keyring_layout_one_directory_per_service_root_key_outside(tmp_path: Path) -> None:
    keys, operator = tmp_path / "keys", tmp_path / "operator"
    created = init_keyring(keys)
    assert str(operator / "root.key") in created
    assert f"{REGISTRY_FILE} v{len(SERVICE_SUBJECTS) + 1}" in created  # and the operator-token issuer
    assert stat.S_IMODE(operator.stat().st_mode) == 0o700
    assert stat.S_IMODE((operator / "root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert not list(keys.rglob("root.key")), "the root key is never in the keyring"
    assert sorted(p.name for p in keys.iterdir() if p.is_file()) == ["registry.json", "registry.json.sig", "root.pub"]
    registry = KeyRegistry.load(keys)
    for service in SERVICE_SUBJECTS:
        directory = keys / service
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        names = sorted(p.name for p in directory.iterdir())
        assert names == ["registry.json", "registry.json.sig", "root.pub", "signing.key", "wrap.key"], names
        for private in ("signing.key", "wrap.key"):
            assert stat.S_IMODE((directory / private).stat().st_mode) == 0o600
        # Each directory is complete on its own: the registry verifies against its own root.pub.
        own = load_service_keys(directory, service)
        active = KeyRegistry.load(directory).active_key(service)
        assert active is not None
        assert active.key_id == own.signer.key_id
        assert active.wrap_public_key == own.wrap.public_key
        assert registry.service_of(own.signer.key_id) == service

    before = _files(tmp_path)
    assert init_keyring(keys) == []
    assert _files(tmp_path) == before
    # A lost service key is made anew and registered; the old one retires; the others stay.
    (keys / "audit" / "signing.key").unlink()
    assert init_keyring(keys) == ["audit/signing.key", f"{REGISTRY_FILE} v{len(SERVICE_SUBJECTS) + 2}"]
    assert (keys / "lifecycle" / "signing.key").read_bytes() == before["keys/lifecycle/signing.key"]
    registry = KeyRegistry.load(keys / "lifecycle")
    audit = registry.active_key("audit")
    assert audit is not None
    assert audit.key_id == load_signer(keys / "audit" / "signing.key").key_id
    assert [k.status for k in registry.document.keys if k.service == "audit"] == ["retired", "active"]


def test_readers_table() -> None:
    for aggregate_type, readers in AGGREGATE_READERS.items():
        assert readers[0] == writer_of(aggregate_type), aggregate_type  # the writer reads its own
        assert "audit" in readers
    assert set(readers_of("policy")) == set(SERVICE_SUBJECTS)  # every embedded decision point
    assert "context" not in readers_of("agent")
    assert "lifecycle" not in readers_of("memory")
    assert writer_of("nothing") is None


def test_registry_authorises_by_subject(keys_dir: Path, registry: KeyRegistry) -> None:
    lifecycle = load_signer(keys_dir / "lifecycle" / "signing.key")
    policy = load_signer(keys_dir / "policy" / "signing.key")
    assert registry.authorise(lifecycle.key_id, "evt.agent.a1").key_id == lifecycle.key_id
    assert registry.authorise(policy.key_id, "evt.policy.p1").key_id == policy.key_id
    assert registry.service_of(policy.key_id) == "policy"
    assert registry.service_of("ed25519:nope") is None
    # A valid key of the wrong service is refused.
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


def test_revocation_refuses_events_after_its_position_only(keys_dir: Path) -> None:
    old = load_signer(keys_dir / "lifecycle" / "signing.key")
    revoked = revoke_key(keys_dir, old.key_id, after_sequence=10)
    assert revoked.key_id == old.key_id
    for where in (keys_dir, keys_dir / "lifecycle", keys_dir / "audit"):  # published to every directory
        registry = KeyRegistry.load(where)
        assert registry.authorise(old.key_id, "evt.agent.a1", sequence=10).key_id == old.key_id
        with pytest.raises(KeyRevoked, match="revoked after stream sequence 10") as exc:
            registry.authorise(old.key_id, "evt.agent.a1", sequence=11)
        assert exc.value.code == "key_revoked"
        assert isinstance(exc.value, UnauthorisedSigner)
        with pytest.raises(KeyRevoked):  # position unknown: refused (fail closed)
            registry.authorise(old.key_id, "evt.agent.a1")
    # The service got a new active key, and the change is recorded as a registry version.
    registry = KeyRegistry.load(keys_dir)
    new = load_signer(keys_dir / "lifecycle" / "signing.key")
    assert new.key_id != old.key_id
    assert registry.active_key("lifecycle") == registry.key(new.key_id)
    assert registry.authorise(new.key_id, "evt.agent.a1", sequence=11)
    kinds = [(c.kind, c.key_id, c.after_sequence) for c in registry.document.changes[-2:]]
    assert kinds == [("revoke", old.key_id, 10), ("rotate", new.key_id, None)]
    with pytest.raises(KeyringError, match="already revoked"):
        revoke_key(keys_dir, old.key_id, after_sequence=12)
    with pytest.raises(KeyringError, match="not in the key registry"):
        revoke_key(keys_dir, "ed25519:nope", after_sequence=1)


def test_revoked_from_the_start_refuses_every_event(keys_dir: Path) -> None:
    root = load_signer(keys_dir.parent / "operator" / "root.key")
    doc = KeyRegistry.load(keys_dir).document
    key = doc.keys[0]
    revoked = with_revocation(doc, key.key_id, after_sequence=None)
    data = msgspec.json.encode(revoked)
    registry = KeyRegistry.from_signed(data, root.sign(data), root.public_key)
    with pytest.raises(KeyRevoked):
        registry.authorise(key.key_id, SERVICE_SUBJECTS[key.service][0].replace(">", "x"), sequence=1)


def test_rotation_retires_the_old_key_whose_events_stay_valid(keys_dir: Path) -> None:
    old = load_service_keys(keys_dir / "scheduler", "scheduler")
    new = rotate_service_key(keys_dir, "scheduler")
    registry = KeyRegistry.load(keys_dir / "scheduler")
    assert new.key_id == load_signer(keys_dir / "scheduler" / "signing.key").key_id != old.signer.key_id
    assert new.wrap_public_key == old.wrap.public_key  # data keys sealed to it stay readable
    assert registry.key(old.signer.key_id) is not None
    assert registry.key(old.signer.key_id).status == "retired"  # type: ignore[union-attr]
    assert registry.authorise(old.signer.key_id, "evt.task.t1", sequence=99)
    assert registry.document.changes[-1].kind == "rotate"
    with pytest.raises(KeyringError, match="unknown service"):
        rotate_service_key(keys_dir, "nobody")


def test_a_keyring_without_the_operator_directory_cannot_change_the_registry(keys_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        rotate_service_key(keys_dir, "audit", operator_dir=tmp_path / "elsewhere")


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
    root = load_signer(keys_dir.parent / "operator" / "root.key")
    with pytest.raises(KeyringError, match="malformed"):
        KeyRegistry.from_signed(b"{nope", root.sign(b"{nope"), root.public_key)
