"""``verify_export_file`` on worker processes finds exactly what it finds in one process, whatever the block
size (lines longer than a block, no final newline), and numbers a bad line the same."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from symbi_common.crypto import AeadKey
from symbi_common.envelope import event_hash
from symbi_common.key_material import load_signer
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import ZERO_HASH, seal
from symbi_common.streams import RawMessage
from symbi_tlog.errors import ExportMalformed
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import TrustAnchor, export_line, verdicts_of_file, verify_export_file
from symbi_tlog.rules import event_leaf


def _log(keys_dir: Path, n: int) -> list[RawMessage]:
    signer = load_signer(keys_dir / "lifecycle" / "signing.key")
    key = AeadKey("dk-1", os.urandom(32))
    out, prev = [], ZERO_HASH
    for i in range(n):
        data, _ = seal(
            signer=signer, producer="lifecycle", data_key=key, aggregate_type="agent", aggregate_id="a1",
            aggregate_version=i + 1, event_type="agent.touched", schema_version=1, payload=b"x" * (i * 7),
            prev_hash=prev,
        )  # fmt: skip
        prev = event_hash(data)
        out.append(RawMessage("evt.agent.a1", i + 1, data, {}))
    return out


def signed_export(keys_dir: Path, n: int) -> tuple[bytes, str]:
    """An export of ``n`` events and the audit key's checkpoint over them."""
    log = _log(keys_dir, n)
    tree = TreeBuilder()
    for m in log:
        tree.append(event_leaf(m))
    audit = load_signer(keys_dir / "audit" / "signing.key")
    note = sign_checkpoint(Checkpoint("symbi-audit", tree.size, tree.root()), audit, audit.key_id)
    return b"".join(export_line(m) for m in log), note


def test_blocks_and_processes_change_nothing(keys_dir: Path, registry: KeyRegistry, tmp_path: Path) -> None:
    data, note = signed_export(keys_dir, 40)
    data = data[:-1]  # no final newline
    anchor = TrustAnchor(registry)
    one = list(verdicts_of_file(io.BytesIO(data), registry))
    for block in (50, 333, 4096, 1 << 20):  # smaller than a line, odd, larger than the file
        assert list(verdicts_of_file(io.BytesIO(data), registry, workers=2, block=block)) == one
    assert verify_export_file(io.BytesIO(data), note, anchor, workers=2).ok
    bad = data + b"\n\n{not json\n"
    for workers in (1, 2):
        with pytest.raises(ExportMalformed, match="line 42"):
            verify_export_file(io.BytesIO(bad), note, anchor, workers=workers)
    # A regular file: the workers read their blocks from it themselves.
    path = tmp_path / "log.jsonl"
    path.write_bytes(data)
    for block in (50, 333, 4096, 1 << 20):
        with path.open("rb") as fh:
            assert list(verdicts_of_file(fh, registry, workers=2, block=block)) == one
    with path.open("rb") as fh:
        assert verify_export_file(fh, note, anchor, workers=2).ok
    path.write_bytes(bad)
    for block in (50, 4096):
        with path.open("rb") as fh, pytest.raises(ExportMalformed, match="line 42"):
            list(verdicts_of_file(fh, registry, workers=2, block=block))
    middle = data.split(b"\n")
    middle[17] = b'{"sequence": 18, "subject": 5}'
    path.write_bytes(b"\n".join(middle))
    for workers in (1, 2):
        with path.open("rb") as fh, pytest.raises(ExportMalformed, match="line 18 "):
            list(verdicts_of_file(fh, registry, workers=workers, block=300))
    path.write_bytes(b"")
    with path.open("rb") as fh:
        assert list(verdicts_of_file(fh, registry, workers=2)) == []
