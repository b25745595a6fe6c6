"""The console's sessions sealed on disk: they outlive a restart of the console, and anything that does not
open under the console's key or whose token is no longer current is no session (fail closed)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from symbi_cli.console.session_store import ConsoleKeyError, SessionStore
from symbi_cli.console.sessions import Sessions
from symbi_common.operator_tokens import default_operator_dir, issue_token, load_issuer_key

IssueToken = Callable[..., str]


def _only_file(state: Path) -> Path:
    files = list((state / "sessions").iterdir())
    assert len(files) == 1, files
    return files[0]


def test_a_session_outlives_a_restart_and_the_key_is_private(
    keys_dir: Path, tmp_path: Path, issue_operator_token: IssueToken
) -> None:
    state = tmp_path / "console"
    token = issue_operator_token(role="operator", name="otto")
    sid, first = Sessions(keys_dir, state).login(token)
    assert stat.S_IMODE((state / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE(_only_file(state).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    sealed = _only_file(state).read_bytes()
    assert token.encode() not in sealed  # sealed, not stored in the clear
    assert first.csrf.encode() not in sealed
    assert sid not in _only_file(state).name  # the file name does not give the cookie away

    again = Sessions(keys_dir, state)  # a restarted console: same key, same sessions
    assert again.get(sid) == first
    again.logout(sid)
    assert again.get(sid) is None
    assert not list((state / "sessions").iterdir())


def test_tampered_foreign_or_guessed_sessions_are_no_sessions(
    keys_dir: Path, tmp_path: Path, issue_operator_token: IssueToken
) -> None:
    state = tmp_path / "console"
    sessions = Sessions(keys_dir, state)
    sid, _ = sessions.login(issue_operator_token())
    assert sessions.get(None) is None
    assert sessions.get("not a session id") is None
    assert sessions.get(sid[:-1] + ("A" if sid[-1] != "A" else "B")) is None  # a guessed neighbour

    path = _only_file(state)
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    assert sessions.get(sid) is None  # altered bytes do not open
    assert not path.exists()  # and the record is gone

    sid, _ = sessions.login(issue_operator_token())
    (state / "key").unlink()
    os.replace(_only_file(state), tmp_path / "kept")
    other = Sessions(keys_dir, state)  # another console key: the old record does not open under it
    os.replace(tmp_path / "kept", state / "sessions" / (tmp_path / "kept").name)
    assert other.get(sid) is None


def test_a_record_moved_to_another_session_id_does_not_open(
    keys_dir: Path, tmp_path: Path, issue_operator_token: IssueToken
) -> None:
    state = tmp_path / "console"
    sessions = Sessions(keys_dir, state)
    victim, _ = sessions.login(issue_operator_token(name="victim"))
    mine, _ = sessions.login(issue_operator_token(role="auditor", name="mallory"))
    store = sessions.store
    (store.dir / store._name(mine)).write_bytes((store.dir / store._name(victim)).read_bytes())
    assert sessions.get(mine) is None  # the seal is bound to the file's name
    assert sessions.get(victim) is not None


def test_an_expired_or_foreign_token_ends_the_session_and_a_restart_sweeps_it(
    keys_dir: Path, tmp_path: Path, issue_operator_token: IssueToken
) -> None:
    state = tmp_path / "console"
    sessions = Sessions(keys_dir, state)
    sid, _ = sessions.login(issue_operator_token())
    expired, _ = issue_token(
        load_issuer_key(default_operator_dir(keys_dir)), name="old", role="admin", ttl_s=60, now=1_000_000
    )
    record = msgspec.json.encode({"token": expired, "csrf": "x"})
    sessions.store.put(sid, record)
    assert sessions.get(sid) is None
    assert not list((state / "sessions").iterdir())

    sessions.store.put("a" * 43, record)
    sessions.store.put("b" * 43, b"not a session record")
    live, _ = sessions.login(issue_operator_token())
    restarted = Sessions(keys_dir, state)  # the start-up sweep drops what can no longer be a session
    assert len(list((state / "sessions").iterdir())) == 1
    assert restarted.get(live) is not None


def test_a_console_key_others_may_read_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "console"
    SessionStore(state)
    (state / "key").chmod(0o644)
    with pytest.raises(ConsoleKeyError, match="chmod 600"):
        SessionStore(state)
    (state / "key").chmod(0o600)
    (state / "key").write_text("c2hvcnQ=\n")
    with pytest.raises(ConsoleKeyError, match="32 bytes"):
        SessionStore(state)
