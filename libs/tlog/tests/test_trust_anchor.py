"""What the offline verifier rests on is checked, or said to be unchecked: the root key the verifier pins, the
registry version it requires, and witnesses besides the log's own operator."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import (
    REGISTRY_ROLLBACK,
    ROOT_KEY_MISMATCH,
    TrustAnchor,
    export_line,
    verify_export_file,
)
from symbi_tlog.rules import event_leaf

from .test_offline_file import _log


def test_the_root_key_the_registry_version_and_the_witnesses_are_checked_or_named(
    keys_dir: Path, registry: KeyRegistry
) -> None:
    log = _log(keys_dir, 5)
    tree = TreeBuilder()
    for m in log:
        tree.append(event_leaf(m))
    audit = load_signer(keys_dir / "audit" / "signing.key")
    note = sign_checkpoint(Checkpoint("symbi-audit", tree.size, tree.root()), audit, audit.key_id)
    data = b"".join(export_line(m) for m in log)
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
