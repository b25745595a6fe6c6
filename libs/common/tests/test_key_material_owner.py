"""A key file keeps its directory's owner: root rotating or revoking a key in a deployment's ``keys/<service>``
(handed to the containers' user) leaves a key that service can read, still 0600, written atomically. Real files
and uids (the tests run as root)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from symbi_common.key_material import load_signer, read_key_file, write_key_file
from symbi_common.keyfiles import (
    SIGNING_KEY_FILE,
    WRAP_KEY_FILE,
    init_keyring,
    revoke_key,
    rotate_service_key,
    rotate_wrap_key,
    service_dir,
)

#: The containers' user of a deployment directory (cli deploy_dir.SERVICE_UID).
SERVICE_UID = 10001

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="files of another user need root")


def owned(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def hand_over(directory: Path, uid: int) -> None:
    """What ``symbi deploy init`` does to a service's key directory."""
    os.chown(directory, uid, uid)
    for name in os.listdir(directory):
        os.chown(directory / name, uid, uid)


def test_a_key_file_keeps_its_directorys_owner_and_mode(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, SERVICE_UID, SERVICE_UID)
    write_key_file(theirs / "signing.key", b"\x01" * 32, private=True)
    assert owned(theirs / "signing.key") == (SERVICE_UID, SERVICE_UID, 0o600)
    write_key_file(theirs / "signing.key", b"\x02" * 32, private=True)  # replaced: still theirs
    assert owned(theirs / "signing.key") == (SERVICE_UID, SERVICE_UID, 0o600)
    assert read_key_file(theirs / "signing.key") == b"\x02" * 32
    write_key_file(theirs / "root.pub", b"\x03" * 32, private=False)
    assert owned(theirs / "root.pub") == (SERVICE_UID, SERVICE_UID, 0o644)

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    write_key_file(mine / "signing.key", b"\x04" * 32, private=True)
    assert owned(mine / "signing.key") == (0, 0, 0o600)
    # No temporary file is left, and none at a name planted beforehand is followed.
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (theirs / "signing.key.tmp").symlink_to(victim)
    write_key_file(theirs / "signing.key", b"\x05" * 32, private=True)
    assert victim.read_bytes() == b"untouched"
    assert sorted(p.name for p in theirs.iterdir()) == ["root.pub", "signing.key", "signing.key.tmp"]


def test_rotated_and_revoked_keys_stay_the_services(tmp_path: Path) -> None:
    keys, operator = tmp_path / "keys", tmp_path / "operator"
    init_keyring(keys, ["scheduler"], operator_dir=operator)
    directory = service_dir(keys, "scheduler")
    hand_over(directory, SERVICE_UID)

    rotated = rotate_service_key(keys, "scheduler", operator_dir=operator)
    assert owned(directory / SIGNING_KEY_FILE) == (SERVICE_UID, SERVICE_UID, 0o600)
    assert load_signer(directory / SIGNING_KEY_FILE).key_id == rotated.key_id
    rotate_wrap_key(keys, "scheduler", operator_dir=operator)
    assert owned(directory / WRAP_KEY_FILE) == (SERVICE_UID, SERVICE_UID, 0o600)
    revoke_key(
        keys, rotated.key_id, after_sequence=None, operator_dir=operator
    )  # its active key: the service gets a new one
    assert load_signer(directory / SIGNING_KEY_FILE).key_id != rotated.key_id
    assert owned(directory / SIGNING_KEY_FILE) == (SERVICE_UID, SERVICE_UID, 0o600)
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_the_registry_written_into_a_service_directory_follows_no_link_its_user_left(tmp_path: Path) -> None:
    """The service's user may write its directory: a link it leaves at the old fixed temporary name
    (``registry.json.tmp``) must not make root write through it."""
    keys = tmp_path / "keys"
    init_keyring(keys)
    directory = service_dir(keys, "lifecycle")
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    for name in ("registry.json.tmp", "registry.json.sig.tmp", "root.pub.tmp"):
        (directory / name).symlink_to(victim)
    rotate_service_key(keys, "lifecycle")
    assert victim.read_text() == "untouched\n"
    assert not (directory / "registry.json").is_symlink()
    assert (directory / "registry.json").read_bytes() == (keys / "registry.json").read_bytes()
