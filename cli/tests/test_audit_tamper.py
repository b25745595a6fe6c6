"""The tamper suite: every way of altering an export is found by ``symbi audit verify`` with its typed
finding and a non-zero exit.

The log is written by the real event stores (lifecycle and scheduler keys) into a real JetStream and
read back raw; checkpoints are signed with the audit service's real key and cosigned by a witness
key. Each test edits the files as someone with write access to them (or to the storage) would, and
runs the command with the public half of the keyring only.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.audit_cmd import audit_app
from symbi_common.crypto import Signer
from symbi_common.envelope import (
    SealedEvent,
    decode_header,
    decode_sealed,
    encode_header,
    encode_sealed,
    signed_message,
)
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.key_material import load_signer
from symbi_common.registry_document import REGISTRY_FILE, REGISTRY_SIG_FILE, RegistryDocument
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_tlog.cosign import WitnessKey, cosign
from symbi_tlog.merkle import TreeBuilder
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import export_line
from symbi_tlog.rules import event_leaf
from typer.testing import CliRunner


class Touched(Event, frozen=True, tag="agent.touched"):
    n: int


class Noted(Event, frozen=True, tag="task.submitted"):
    n: int


AGENTS: EventCodec[Touched] = EventCodec([Touched])
TASKS: EventCodec[Noted] = EventCodec([Noted])
WITNESS = "witness.test/w1"


@dataclass
class Export:
    log: list[RawMessage]
    dir: Path
    keys: Path
    """The public half of the keyring: root.pub, registry.json and its signature."""
    audit: Signer
    witness: Signer

    @property
    def witness_key(self) -> str:
        return WitnessKey(WITNESS, self.witness.public_key).vkey()

    def note(
        self,
        msgs: list[RawMessage],
        *,
        origin: str = "symbi-audit",
        signer: Signer | None = None,
        cosigned: bool = True,
    ) -> str:
        tree = TreeBuilder()
        for m in msgs:
            tree.append(event_leaf(m))
        signer = signer or self.audit
        note = sign_checkpoint(Checkpoint(origin, tree.size, tree.root()), signer, signer.key_id)
        if cosigned:
            note += cosign(note.partition("\n\n")[0] + "\n", self.witness, WITNESS, 1_700_000_000)
        return note

    def write(self, msgs: list[RawMessage], note: str | None, name: str = "log") -> Path:
        path = self.dir / f"{name}.jsonl"
        path.write_bytes(b"".join(export_line(m) for m in msgs))
        if note is not None:
            path.with_suffix(".checkpoint").write_text(note)
        return path

    def verify(self, path: Path, *args: str, keys: Path | None = None) -> tuple[int, dict[str, Any]]:
        argv = ["verify", str(path), "--keys-dir", str(keys or self.keys), "--json", *args]
        result = CliRunner().invoke(audit_app, argv)
        assert result.exit_code in (0, 1), result.output
        return result.exit_code, json.loads(result.output)

    def kinds(self, msgs: list[RawMessage], note: str | None = None, *args: str) -> tuple[int, list[str]]:
        path = self.write(msgs, note if note is not None else self.note(self.log))
        code, doc = self.verify(path, *args)
        return code, [f["kind"] for f in doc["findings"]]


def public_keys(keys_dir: Path, to: Path, document: RegistryDocument | None = None) -> Path:
    """The public half of a keyring; with ``document``, a registry re-issued (and root-signed) as given."""
    to.mkdir()
    shutil.copy(keys_dir / "root.pub", to / "root.pub")
    if document is None:
        for name in (REGISTRY_FILE, REGISTRY_SIG_FILE):
            shutil.copy(keys_dir / name, to / name)
    else:
        data = msgspec.json.encode(document)
        (to / REGISTRY_FILE).write_bytes(data)
        (to / REGISTRY_SIG_FILE).write_bytes(
            base64.b64encode(load_signer(keys_dir.parent / "operator" / "root.key").sign(data))
        )
    return to


@pytest.fixture
async def export(make_store: Callable[..., Any], provisioned: NatsClient, keys_dir: Path, tmp_path: Path) -> Export:
    lifecycle: EventStore = await make_store("lifecycle")
    scheduler: EventStore = await make_store("scheduler")
    tips = {}
    for i in range(10):
        for agent in ("a0", "a1", "a2"):
            recs = await lifecycle.append(
                "agent", agent, [Touched(n=i)], AGENTS, expected=tips.get(agent, NEW_AGGREGATE)
            )
            tips[agent] = recs[-1].tip
        recs = await scheduler.append("task", "t0", [Noted(n=i)], TASKS, expected=tips.get("t0", NEW_AGGREGATE))
        tips["t0"] = recs[-1].tip
    log: list[RawMessage] = []
    async for batch in read_subject(provisioned, EVENTS_STREAM, "evt.>"):
        log.extend(batch)
    assert len(log) == 40
    work = tmp_path / "export"
    work.mkdir()
    return Export(
        log,
        work,
        public_keys(keys_dir, tmp_path / "public"),
        load_signer(keys_dir / "audit" / "signing.key"),
        Signer.generate(),
    )


def at(log: list[RawMessage], subject: str, version: int) -> int:
    for i, m in enumerate(log):
        if m.subject == subject and decode_header(decode_sealed(m.data).header).aggregate_version == version:
            return i
    raise AssertionError("no such event")


def renumber(msgs: list[RawMessage]) -> list[RawMessage]:
    return [RawMessage(m.subject, i, m.data, {}) for i, m in enumerate(msgs, 1)]


def resign(m: RawMessage, signer: Signer, **header: Any) -> RawMessage:
    sealed = decode_sealed(m.data)
    hb = encode_header(msgspec.structs.replace(decode_header(sealed.header), signing_key_id=signer.key_id, **header))
    data = encode_sealed(SealedEvent(hb, sealed.ciphertext, signer.sign(signed_message(hb, sealed.ciphertext))))
    return RawMessage(m.subject, m.sequence, data, {})


# --- the untampered export -------------------------------------------------------------------------


def test_untampered_export_verifies_against_its_checkpoint_and_witness(export: Export) -> None:
    path = export.write(export.log, export.note(export.log))
    code, doc = export.verify(path, "--witness-key", export.witness_key, "--min-witnesses", "1")
    assert (code, doc["findings"], doc["events"]) == (0, [], 40)
    assert doc["checkpoint"] == {"origin": "symbi-audit", "size": 40}
    # The previous checkpoint of a prefix is consistent with it.
    prev = export.dir / "prev.checkpoint"
    prev.write_text(export.note(export.log[:25]))
    code, doc = export.verify(path, "--previous", str(prev))
    assert (code, doc["findings"], doc["previous"]["size"]) == (0, [], 25)


def test_no_checkpoint_fails_and_chains_only_says_what_it_did_not_check(export: Export) -> None:
    path = export.write(export.log, None)
    code, doc = export.verify(path)
    assert code == 1
    assert [f["kind"] for f in doc["findings"]] == ["checkpoint_missing"]
    result = CliRunner().invoke(audit_app, ["verify", str(path), "--keys-dir", str(export.keys)])
    assert result.exit_code == 1
    assert "--no-checkpoint" in result.output
    result = CliRunner().invoke(audit_app, ["verify", str(path), "--keys-dir", str(export.keys), "--no-checkpoint"])
    assert result.exit_code == 0, result.output
    assert "NOT CHECKED" in result.output
    assert "deleted tail" in result.output
    # Without a checkpoint a deleted tail passes: which is exactly why it is not the default.
    short = export.write(export.log[:-5], None, "short")
    assert (
        CliRunner()
        .invoke(audit_app, ["verify", str(short), "--keys-dir", str(export.keys), "--no-checkpoint"])
        .exit_code
        == 0
    )


# --- the entries ------------------------------------------------------------------------------------


def test_byte_edit(export: Export) -> None:
    i = at(export.log, "evt.agent.a1", 4)
    data = bytearray(export.log[i].data)
    data[-70] ^= 1  # in the ciphertext
    tampered = list(export.log)
    tampered[i] = RawMessage(export.log[i].subject, export.log[i].sequence, bytes(data), {})
    assert export.kinds(tampered) == (1, ["bad_signature", "root_mismatch"])


def test_delete_in_the_middle(export: Export) -> None:
    i = at(export.log, "evt.agent.a2", 3)
    tampered = export.log[:i] + export.log[i + 1 :]
    code, kinds = export.kinds(tampered)
    assert code == 1
    assert kinds[:2] == ["sequence_gap", "version_gap"]
    assert "log_truncated" in kinds
    code, kinds = export.kinds(renumber(tampered))
    assert code == 1
    assert kinds == ["version_gap", "log_truncated"]


def test_delete_the_tail_of_the_log(export: Export) -> None:
    assert export.kinds(export.log[:-4]) == (1, ["log_truncated"])


def test_delete_the_tail_of_one_aggregate(export: Export) -> None:
    """The last event of agent a0 goes; everything after is renumbered: every chain and sequence is intact."""
    i = at(export.log, "evt.agent.a0", 10)
    tampered = renumber(export.log[:i] + export.log[i + 1 :])
    assert export.kinds(tampered) == (1, ["log_truncated"])
    # Padded back to the checkpoint's size with a copy of another aggregate's last event: the root differs.
    padded = renumber([*tampered, export.log[-1]])
    code, kinds = export.kinds(padded)
    assert code == 1
    assert kinds[-1] == "root_mismatch"


def test_swap(export: Export) -> None:
    i, j = at(export.log, "evt.agent.a0", 5), at(export.log, "evt.task.t0", 5)
    tampered = list(export.log)
    tampered[i], tampered[j] = tampered[j], tampered[i]
    assert export.kinds(renumber(tampered)) == (1, ["root_mismatch"])


def test_renumber(export: Export) -> None:
    """The same events with other stream sequences (no gap): every leaf commits to its sequence."""
    shifted = [RawMessage(m.subject, m.sequence + 100, m.data, {}) for m in export.log]
    assert export.kinds(shifted) == (1, ["sequence_gap", "root_mismatch"])
    twisted = list(export.log)
    twisted[5], twisted[6] = (
        RawMessage(export.log[5].subject, export.log[6].sequence, export.log[5].data, {}),
        RawMessage(export.log[6].subject, export.log[5].sequence, export.log[6].data, {}),
    )
    code, kinds = export.kinds(twisted)
    assert code == 1
    assert kinds[-1] == "root_mismatch"


def test_move_between_aggregates(export: Export) -> None:
    i = at(export.log, "evt.agent.a2", 10)
    moved = list(export.log)
    moved[i] = RawMessage("evt.agent.a1", moved[i].sequence, moved[i].data, {})
    code, kinds = export.kinds(moved)
    assert code == 1
    assert kinds == ["subject_mismatch", "root_mismatch"]
    # Re-signed for its new aggregate by a key the attacker holds: not in the registry.
    forger = Signer.generate()
    moved[i] = resign(RawMessage("evt.agent.a1", moved[i].sequence, export.log[i].data, {}), forger, aggregate_id="a1")
    code, kinds = export.kinds(moved)
    assert code == 1
    assert kinds == ["unknown_signing_key", "root_mismatch"]


def test_foreign_signer(export: Export) -> None:
    i = at(export.log, "evt.agent.a0", 3)
    tampered = list(export.log)
    tampered[i] = resign(tampered[i], Signer.generate())
    assert export.kinds(tampered) == (1, ["unknown_signing_key", "root_mismatch"])
    # A checkpoint signed by a key that is not the log's.
    other = Signer.generate()
    assert export.kinds(export.log, export.note(export.log, signer=other)) == (1, ["checkpoint_signature"])


def test_wrong_services_signer(export: Export, keys_dir: Path) -> None:
    scheduler = load_signer(keys_dir / "scheduler" / "signing.key")  # in the registry, but for evt.task.* only
    i = at(export.log, "evt.agent.a0", 3)
    tampered = list(export.log)
    tampered[i] = resign(tampered[i], scheduler)
    assert export.kinds(tampered) == (1, ["unauthorised_signer", "root_mismatch"])
    # A checkpoint signed by a registered key of another service than audit.
    lifecycle = load_signer(keys_dir / "lifecycle" / "signing.key")
    assert export.kinds(export.log, export.note(export.log, signer=lifecycle)) == (1, ["checkpoint_signature"])


def test_revoked_key(export: Export, keys_dir: Path, tmp_path: Path) -> None:
    """The registry offers a key status; a key marked revoked verifies nothing it signed."""
    doc = msgspec.json.decode((keys_dir / REGISTRY_FILE).read_bytes(), type=RegistryDocument)

    def revoked(service: str, status: str = "revoked") -> RegistryDocument:
        keys = [msgspec.structs.replace(k, status=status) if k.service == service else k for k in doc.keys]
        return msgspec.structs.replace(doc, keys=keys)

    path = export.write(export.log, export.note(export.log))
    code, report = export.verify(path, keys=public_keys(keys_dir, tmp_path / "no-lifecycle", revoked("lifecycle")))
    kinds = [f["kind"] for f in report["findings"]]
    assert code == 1
    assert kinds.count("key_revoked") == 30  # a revoked key: KeyRevoked, an UnauthorisedSigner
    assert set(kinds) == {"key_revoked"}
    code, report = export.verify(path, keys=public_keys(keys_dir, tmp_path / "no-audit", revoked("audit")))
    assert code == 1
    assert [f["kind"] for f in report["findings"]] == ["checkpoint_key_revoked"]
    # Rotated out (retired), the audit key's checkpoints signed before the rotation still verify.
    code, report = export.verify(path, keys=public_keys(keys_dir, tmp_path / "rotated", revoked("audit", "retired")))
    assert (code, report["findings"]) == (0, [])


# --- the checkpoint ---------------------------------------------------------------------------------


def test_stale_checkpoint(export: Export) -> None:
    """The tail cut off and an older, genuine checkpoint exported with it: only a checkpoint seen before tells."""
    old = export.log[:30]
    path = export.write(old, export.note(old))
    assert export.verify(path)[0] == 0
    seen = export.dir / "seen.checkpoint"
    seen.write_text(export.note(export.log))
    code, doc = export.verify(path, "--previous", str(seen))
    assert code == 1
    assert [f["kind"] for f in doc["findings"]] == ["stale_checkpoint"]


def test_stale_checkpoint_by_the_witnesses_clock(export: Export) -> None:
    """Without a checkpoint seen before: the witness's cosignature dates the checkpoint; an old one is stale."""
    old = export.log[:30]
    path = export.write(old, export.note(old))  # cosigned at 1,700,000,000 (November 2023)
    code, doc = export.verify(path, "--witness-key", export.witness_key, "--max-age", "3600")
    assert code == 1
    assert [f["kind"] for f in doc["findings"]] == ["stale_checkpoint"]
    assert "s old" in doc["findings"][0]["reason"]
    fresh = export.note(old, cosigned=False)
    fresh += cosign(fresh.partition("\n\n")[0] + "\n", export.witness, WITNESS, int(time.time()))
    path = export.write(old, fresh)
    assert export.verify(path, "--witness-key", export.witness_key, "--max-age", "3600")[0] == 0


def test_other_origin(export: Export) -> None:
    note = export.note(export.log, origin="someone-elses-log")
    assert export.kinds(export.log, note) == (1, ["checkpoint_origin"])
    path = export.write(export.log, note)
    assert export.verify(path, "--origin", "someone-elses-log")[0] == 0


def test_forged_or_missing_witness_cosignature(export: Export) -> None:
    args = ("--witness-key", export.witness_key, "--min-witnesses", "1")
    plain = export.note(export.log, cosigned=False)
    assert export.kinds(export.log, plain, *args) == (1, ["witness_cosignature_missing"])
    # A line with the witness's name and key id whose signature is someone else's.
    impostor = Signer.generate()
    body = plain.partition("\n\n")[0] + "\n"
    line = cosign(body, impostor, WITNESS, 1_700_000_000)
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    blob[:4] = WitnessKey(WITNESS, export.witness.public_key).key_id
    forged = plain + f"\u2014 {WITNESS} {base64.b64encode(bytes(blob)).decode()}\n"
    assert export.kinds(export.log, forged, *args) == (
        1,
        ["witness_cosignature_invalid", "witness_cosignature_missing"],
    )
    # The witness's genuine cosignature of another checkpoint, moved onto this one.
    other = export.note(export.log[:20])
    moved = plain + other.partition("\n\n")[2].splitlines(keepends=True)[1]
    assert export.kinds(export.log, moved, *args) == (1, ["witness_cosignature_invalid", "witness_cosignature_missing"])
    # Two witnesses required, one cosigned.
    second = WitnessKey("witness.test/w2", Signer.generate().public_key).vkey()
    good = export.note(export.log)
    code, kinds = export.kinds(
        export.log, good, "--witness-key", export.witness_key, "--witness-key", second, "--min-witnesses", "2"
    )
    assert (code, kinds) == (1, ["witness_cosignature_missing"])


def test_split_view(export: Export) -> None:
    """The log signed two checkpoints of the same size with different roots: one for us, one for others."""
    i = at(export.log, "evt.task.t0", 10)
    other_view = list(export.log)
    other_view[i], other_view[i - 1] = other_view[i - 1], other_view[i]
    other = export.dir / "other.checkpoint"
    other.write_text(export.note(renumber(other_view)))
    path = export.write(export.log, export.note(export.log))
    code, doc = export.verify(path, "--previous", str(other))
    assert code == 1
    assert [f["kind"] for f in doc["findings"]] == ["split_view"]
    # A fork: an earlier checkpoint whose tree is not a prefix of this one.
    fork = export.dir / "fork.checkpoint"
    fork.write_text(export.note(renumber(other_view)[:39]))
    code, doc = export.verify(path, "--previous", str(fork))
    assert code == 1
    assert [f["kind"] for f in doc["findings"]] == ["inconsistent_checkpoint"]


def test_entries_not_covered_by_the_checkpoint(export: Export) -> None:
    assert export.kinds(export.log, export.note(export.log[:35])) == (1, ["entries_uncovered"])


def test_verifying_on_several_processes_finds_the_same(export: Export) -> None:
    i = at(export.log, "evt.agent.a1", 4)
    data = bytearray(export.log[i].data)
    data[-70] ^= 1
    tampered = list(export.log)
    tampered[i] = RawMessage(export.log[i].subject, export.log[i].sequence, bytes(data), {})
    path = export.write(tampered, export.note(export.log))
    one = export.verify(path, "--workers", "1")
    two = export.verify(path, "--workers", "2")
    assert one == two
    assert [(f["sequence"], f["kind"]) for f in two[1]["findings"]] == [(i + 1, "bad_signature"), (40, "root_mismatch")]
    path = export.write(export.log, export.note(export.log), "good")
    assert export.verify(path, "--workers", "2")[0] == 0
    # A malformed line, found by a worker process: unusable input, exit 2, naming the line.
    path.write_bytes(path.read_bytes() + b"not json\n")
    result = CliRunner().invoke(audit_app, ["verify", str(path), "--keys-dir", str(export.keys), "--workers", "2"])
    assert result.exit_code == 2
    assert "line 41" in result.output
