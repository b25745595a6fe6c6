"""CachedRegistry: the cache never outlives a revocation, whether it is in the registry or arrives live."""

from __future__ import annotations

import pytest
from symbi_common.crypto import Signer, WrapKey
from symbi_common.errors import KeyRevoked
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_changes import empty_registry, encode_registry, with_revocation, with_service_key
from symbi_tlog.rules import CachedRegistry

SUBJECT = "evt.agent.a1"


def _registry() -> tuple[Signer, Signer, KeyRegistry]:
    root, lifecycle = Signer.generate(), Signer.generate()
    doc = with_service_key(empty_registry(root), "lifecycle", lifecycle, WrapKey.generate().public_key)
    return root, lifecycle, KeyRegistry(doc)


def test_a_key_revoked_after_a_sequence_is_refused_after_it_even_once_approved_before_it() -> None:
    _, lifecycle, live = _registry()
    revoked = KeyRegistry(with_revocation(live.document, lifecycle.key_id, after_sequence=5))
    cached = CachedRegistry(revoked)
    cached.authorise(lifecycle.key_id, SUBJECT, sequence=3)  # before the revocation point: valid
    cached.authorise(lifecycle.key_id, SUBJECT, sequence=5)
    with pytest.raises(KeyRevoked):
        cached.authorise(lifecycle.key_id, SUBJECT, sequence=6)


def test_a_revocation_applied_live_to_the_wrapped_registry_takes_effect_at_the_next_event() -> None:
    root, lifecycle, live = _registry()
    cached = CachedRegistry(live)
    cached.authorise(lifecycle.key_id, SUBJECT, sequence=1)  # approved and cached
    doc = with_revocation(live.document, lifecycle.key_id, after_sequence=1)
    data = encode_registry(doc)
    live.advance(data, root.sign(data), root.public_key)
    with pytest.raises(KeyRevoked):
        cached.authorise(lifecycle.key_id, SUBJECT, sequence=2)
    assert cached.version == doc.version
    cached.authorise(lifecycle.key_id, SUBJECT, sequence=1)  # still valid before the point
