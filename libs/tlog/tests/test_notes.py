"""Signed checkpoints in the C2SP signed-note format."""

from __future__ import annotations

import base64

import pytest
from symbi_common.crypto import Signer
from symbi_tlog.errors import CheckpointInvalid
from symbi_tlog.notes import Checkpoint, key_hash, parse_checkpoint, sign_checkpoint, verify_checkpoint


def test_round_trip_and_exact_format() -> None:
    signer = Signer.generate()
    cp = Checkpoint("symbi-audit", 42, bytes(range(32)))
    note = sign_checkpoint(cp, signer, "audit-key")
    body, sig_line = note.split("\n\n")
    assert body == f"symbi-audit\n42\n{base64.b64encode(bytes(range(32))).decode()}"
    assert sig_line.startswith("\u2014 audit-key ")
    assert sig_line.endswith("\n")
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert blob[:4] == key_hash("audit-key", signer.public_key)
    assert len(blob) == 68
    assert verify_checkpoint(note, key_name="audit-key", public_key=signer.public_key) == cp
    assert parse_checkpoint(note)[0] == cp


def test_forged_and_altered_checkpoints_are_refused() -> None:
    signer, other = Signer.generate(), Signer.generate()
    note = sign_checkpoint(Checkpoint("symbi-audit", 7, bytes(32)), signer, "k")
    altered = note.replace("\n7\n", "\n8\n", 1)
    with pytest.raises(CheckpointInvalid, match="does not verify"):
        verify_checkpoint(altered, key_name="k", public_key=signer.public_key)
    forged = sign_checkpoint(Checkpoint("symbi-audit", 7, bytes(32)), other, "k")
    with pytest.raises(CheckpointInvalid, match="no signature by key"):
        verify_checkpoint(forged, key_name="k", public_key=signer.public_key)
    with pytest.raises(CheckpointInvalid, match="not 'other-log'"):
        verify_checkpoint(note, key_name="k", public_key=signer.public_key, origin="other-log")


@pytest.mark.parametrize(
    "note",
    [
        "",
        "symbi\n1\nAAAA\n",
        "symbi\nx\nAAAA\n\n\u2014 k AAAA\n",
        "symbi\n1\n!!\n\n\u2014 k AAAA\n",
        "a\n1\n" + "A" * 44 + "\n\n- k x\n",
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(CheckpointInvalid):
        verify_checkpoint(note, key_name="k", public_key=bytes(32))
