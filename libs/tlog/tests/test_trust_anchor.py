"""What the offline verifier rests on is checked, or said to be unchecked: the root key the verifier pins, the
registry version it requires, and witnesses besides the log's own operator."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from symbi_common.keyring import KeyRegistry
from symbi_tlog.offline import (
    REGISTRY_ROLLBACK,
    ROOT_KEY_MISMATCH,
    TrustAnchor,
    verify_export_file,
)

from .test_offline_file import signed_export


def test_the_root_key_the_registry_version_and_the_witnesses_are_checked_or_named(
    keys_dir: Path, registry: KeyRegistry
) -> None:
    data, note = signed_export(keys_dir, 5)
    root = registry.document.root_key_id

    def verify(anchor: TrustAnchor) -> tuple[list[str], list[str]]:
        report = verify_export_file(io.BytesIO(data), note, anchor)
        assert (report.root_key_id, report.registry_version) == (root, registry.version)
        return [f.kind for f in report.findings], report.not_checked

    # Nothing pinned: it verifies, and says it took the registry's root key and the operator's checkpoint on trust.
    findings, unchecked = verify(TrustAnchor(registry))
    assert findings == []
    assert any(f"root key {root} came with it" in u for u in unchecked)
    assert any("no witness cosignature was required" in u for u in unchecked)
    pinned = TrustAnchor(registry, root_key_id=root, min_registry_version=registry.version)
    findings, unchecked = verify(pinned)
    assert findings == []
    assert not any("root key" in u for u in unchecked)
    # Another root key pinned (the registry and every key remade by whoever handed them over): a finding.
    findings, _ = verify(dataclasses.replace(pinned, root_key_id="ed25519:" + "0" * 16))
    assert findings == [ROOT_KEY_MISMATCH]
    # An older registry than the verifier requires (it could undo a revocation): a finding.
    findings, _ = verify(dataclasses.replace(pinned, min_registry_version=registry.version + 1))
    assert findings == [REGISTRY_ROLLBACK]
