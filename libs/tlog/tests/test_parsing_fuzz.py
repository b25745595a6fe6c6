"""Bad input never crashes the parsers of checkpoints, cosignatures, witness requests and export lines: each
answers with its typed error (or, for the witness, a protocol status), whatever the bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_common.crypto import Signer
from symbi_tlog.cosign import WitnessKey, cosign, verify_cosignatures
from symbi_tlog.errors import CheckpointInvalid, CosignatureInvalid, ExportMalformed, WitnessRequestMalformed
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, parse_checkpoint, sign_checkpoint
from symbi_tlog.offline import read_export
from symbi_tlog.witness import LogKey, decide, format_add_checkpoint, parse_add_checkpoint

LOG = Signer.generate()
LOGS = {"symbi-audit": [LogKey("symbi-audit", LOG.key_id, LOG.public_key)]}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_witness_requests(body: bytes) -> None:
    try:
        request = parse_add_checkpoint(body)
    except WitnessRequestMalformed:
        return
    assert decide(request, LOGS, None).status in (200, 400, 403, 404, 409, 422)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_checkpoint_notes(note: str) -> None:
    with contextlib.suppress(CheckpointInvalid):
        parse_checkpoint(note)
    with contextlib.suppress(CheckpointInvalid):
        verify_cosignatures(note, [WitnessKey("w", Signer.generate().public_key)])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_export_lines(lines: list[bytes]) -> None:
    with contextlib.suppress(ExportMalformed):
        list(read_export(lines))


@given(st.text(max_size=120))
def test_witness_keys(vkey: str) -> None:
    with contextlib.suppress(CosignatureInvalid):
        WitnessKey.parse(vkey)


def test_cosignature_round_trip_and_protocol_decisions() -> None:
    witness = Signer.generate()
    key = WitnessKey("witness.example/w1", witness.public_key)
    assert WitnessKey.parse(key.vkey()) == key
    with pytest.raises(CosignatureInvalid):
        WitnessKey.parse(key.vkey().replace("+", "+00", 1))
    tree = TreeBuilder()
    for i in range(5):
        tree.append(bytes([i]) * 32)
    note = sign_checkpoint(Checkpoint("symbi-audit", 5, tree.root()), LOG, LOG.key_id)
    line = cosign(note.partition("\n\n")[0] + "\n", witness, key.name, 1_700_000_000)
    assert verify_cosignatures(note + line, [key]).valid == {key.name: 1_700_000_000}
    # Another timestamp than the signed one: forged.
    assert verify_cosignatures(
        note + line.replace(line.split(" ")[2], line.split(" ")[2][:6] + "A" + line.split(" ")[2][7:]), [key]
    ).forged in ([key.name], [])
    first = decide(parse_add_checkpoint(format_add_checkpoint(0, [], note)), LOGS, None)
    assert (first.status, first.checkpoint) == (200, Checkpoint("symbi-audit", 5, tree.root()))
    assert decide(parse_add_checkpoint(format_add_checkpoint(0, [], note)), LOGS, (5, tree.root())).status == 409
    assert decide(parse_add_checkpoint(format_add_checkpoint(5, [], note)), LOGS, (5, tree.root())).status == 200
    assert decide(parse_add_checkpoint(format_add_checkpoint(3, [], note)), LOGS, (3, bytes(32))).status == 422
    assert decide(parse_add_checkpoint(format_add_checkpoint(6, [], note)), LOGS, None).status == 400
