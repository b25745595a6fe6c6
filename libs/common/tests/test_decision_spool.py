"""The decision spool's file format and ownership (no NATS: the replay is tested in the policy service's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from symbi_common.errors import ConfigError, IntegrityError
from symbi_common.policy.decision_spool import (
    BEGIN,
    ENTRY,
    STORED,
    DecisionSpool,
    batch_count,
    frame,
    orphans,
    spool_directory,
    unsent,
)


def batch(batch_id: str, count: int) -> bytes:
    return f'{{"id":"{batch_id}","n":{count}}}'.encode()


def test_what_is_unsent_is_every_decision_after_the_last_stored_batch() -> None:
    data = b"".join(
        [
            frame(ENTRY, b"d1"),
            frame(ENTRY, b"d2"),
            frame(BEGIN, batch("b1", 2)),
            frame(ENTRY, b"d3"),
            frame(STORED, batch("b1", 2)),
            frame(ENTRY, b"d4"),
        ]
    )
    held = unsent(data)
    assert held.entries == [b"d3", b"d4"]
    assert held.open is None


def test_the_batch_being_sent_keeps_its_id_and_a_frame_cut_short_ends_the_file() -> None:
    data = frame(ENTRY, b"d1") + frame(ENTRY, b"d2") + frame(BEGIN, batch("b1", 1)) + frame(BEGIN, batch("b1", 1))
    held = unsent(data + frame(ENTRY, b"d3")[:-1])
    assert held.entries == [b"d1", b"d2"]
    assert held.open is not None
    assert (held.open.id, held.open.n) == ("b1", 1)


@pytest.mark.parametrize(
    "frames",
    [
        [frame(STORED, batch("b1", 1))],  # stored, never begun
        [frame(ENTRY, b"d1"), frame(BEGIN, batch("b1", 2))],  # more than it holds
        [frame(ENTRY, b"d1"), frame(BEGIN, batch("b1", 1)), frame(STORED, batch("b2", 1))],  # another batch
        [frame(ENTRY, b"d1"), frame(BEGIN, b"{not json")],
        [frame(b"X", b"")],
    ],
)
def test_frames_that_contradict_each_other_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(IntegrityError):
        unsent(b"".join(frames))


def test_a_live_processs_spool_is_not_an_orphan_and_a_stopped_ones_is(tmp_path: Path) -> None:
    live = DecisionSpool(tmp_path, "scheduler-aaaaaaaaaaaa")
    live.append(b'{"d":1}')
    assert orphans(tmp_path, "scheduler") == []
    stopped = DecisionSpool(tmp_path, "scheduler-bbbbbbbbbbbb")
    stopped.append(b'{"d":2}')
    stopped.begin("b1", 1)
    stopped.append(b'{"d":3}')
    stopped.close(all_stored=False)  # as a process that dies: the file stays, unlocked
    other_service = DecisionSpool(tmp_path, "audit-cccccccccccc")
    other_service.append(b'{"d":4}')
    other_service.close(all_stored=False)
    found = orphans(tmp_path, "scheduler")
    assert [o.source for o in found] == ["scheduler-bbbbbbbbbbbb"]
    batches = found[0].batches(batch_size=10, batch_bytes=1000)
    assert batches[0] == ("b1", [b'{"d":2}'])
    assert batches[1][1] == [b'{"d":3}']
    # Content-addressed: the same batches again if this replay is cut short and done by the next process.
    found[0].release()
    again = orphans(tmp_path, "scheduler")
    assert again[0].batches(batch_size=10, batch_bytes=1000) == batches
    again[0].done()
    assert not (tmp_path / "scheduler-bbbbbbbbbbbb.spool").exists()
    assert orphans(tmp_path, "scheduler") == []
    live.close(all_stored=False)


def test_a_spool_starts_over_once_everything_is_stored_and_goes_when_closed(tmp_path: Path) -> None:
    spool = DecisionSpool(tmp_path, "audit-dddddddddddd")
    spool.append(b"d1")
    spool.append(b"d2")
    spool.begin("b1", 1)
    spool.stored("b1", 1, all_stored=False)
    assert unsent(spool.path.read_bytes()).entries == [b"d2"]
    spool.begin("b2", 1)
    spool.stored("b2", 1, all_stored=True)
    assert spool.path.stat().st_size == 0
    spool.append(b"d3")  # appended at the new end
    assert unsent(spool.path.read_bytes()).entries == [b"d3"]
    assert os.stat(spool.path).st_mode & 0o777 == 0o600
    spool.close(all_stored=True)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_orphan_is_removed_and_an_unreadable_one_left_in_place(tmp_path: Path) -> None:
    DecisionSpool(tmp_path, "audit-eeeeeeeeeeee").close(all_stored=False)
    (tmp_path / "audit-ffffffffffff.spool").write_bytes(frame(STORED, batch("x", 1)))
    assert orphans(tmp_path, "audit") == []
    assert [p.name for p in tmp_path.iterdir()] == ["audit-ffffffffffff.spool"]


def test_an_unusable_spool_directory_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be created"):
        spool_directory(blocker / "spool")
    with pytest.raises(ConfigError, match="not a file name"):
        DecisionSpool(tmp_path, "../escape")


def test_a_batch_is_bounded_by_count_and_bytes_and_holds_at_least_one() -> None:
    assert batch_count([b"aa", b"bb", b"cc"], batch_size=2, batch_bytes=100) == 2
    assert batch_count([b"aa", b"bb", b"cc"], batch_size=10, batch_bytes=5) == 2
    assert batch_count([b"a" * 50, b"b"], batch_size=10, batch_bytes=5) == 1


def test_a_stored_batch_that_cannot_be_noted_does_not_stop_the_sender(tmp_path: Path) -> None:
    """The log's sender notes each stored batch; a spool it cannot write then must not end the sender."""
    spool = DecisionSpool(tmp_path, "audit-abcabcabcabc")
    spool.append(b"d1")
    spool.begin("b1", 1)
    os.close(spool._fd)  # every write and truncate now fails
    spool.stored("b1", 1, all_stored=False)
    spool.stored("b1", 1, all_stored=True)
    spool._fd = os.open(spool.path, os.O_RDONLY)  # for close()
    assert unsent(spool.path.read_bytes()).open is not None  # not noted: a replay sends b1 again, under its id
    spool.close(all_stored=False)
