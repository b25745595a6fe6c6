"""Filesystem grants: the pure rules (grants.py), data roots and grants checked on a real disk (data_roots.py),
the data files' confinement (data_files.py) and the spec's mounts. No Docker here: test_data_grants.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from symbi_common.decisions import DecisionRecord
from symbi_common.errors import ConfigError
from symbi_common.settings import load_settings
from symbi_common.settings_sandbox import DataRootSettings
from symbi_contracts.lifecycle.config import PathAccess, ResourceLimits, Workload
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted
from symbi_sandbox_agent import data_files
from symbi_sandbox_agent.config import check_settings
from symbi_sandbox_agent.data_files import DataFileError
from symbi_sandbox_agent.data_roots import load_roots, resolve
from symbi_sandbox_agent.grants import (
    BadDataPath,
    DataMount,
    DataRoot,
    GrantRefused,
    NotGranted,
    locate,
    match_grant,
    mount_of,
    plan,
)
from symbi_sandbox_agent.spec import HostCapabilities, SandboxDefaults, build_spec
from symbi_sandbox_agent.tasks import fold_task

ROOTS = {
    "logs": DataRoot("logs", "/srv/logs", "internal"),
    "lake": DataRoot("lake", "/data/lake", declared="/lake"),
}


# --- pure rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root", "rel", "target"),
    [
        ("/symbi/data/logs", "logs", "", "/symbi/data/logs"),
        ("/symbi/data/logs/app/", "logs", "app", "/symbi/data/logs/app"),
        ("/srv/logs/app/2026", "logs", "app/2026", "/symbi/data/logs/app/2026"),
        ("/srv/logs", "logs", "", "/symbi/data/logs"),
        ("/lake/orders", "lake", "orders", "/symbi/data/lake/orders"),  # the path as the operator wrote it
    ],
)
def test_a_grant_names_a_directory_of_one_root_by_its_portable_or_its_host_path(
    path: str, root: str, rel: str, target: str
) -> None:
    grant = match_grant(path, "read", ROOTS)
    assert (grant.root.name, grant.rel, grant.target, grant.writable) == (root, rel, target, False)
    assert match_grant(path, "read_write", ROOTS).writable is True


@pytest.mark.parametrize(
    ("path", "mode", "why"),
    [
        ("/srv/logs/../../etc", "read", "'..'"),
        ("/symbi/data/logs/app/../../..", "read", "'..'"),
        ("/srv/logs/./app", "read", "'.'"),
        ("/srv/logs//app", "read", "'//'"),
        ("srv/logs/app", "read", "absolute"),
        ("/etc", "read", "outside every data root"),
        ("/srv/logsx", "read", "outside every data root"),  # a prefix of a name is not the root
        ("/symbi/data/secrets", "read", "no data root 'secrets'"),
        ("/symbi/data", "read", "names no data root"),
        ("/srv/logs/app", "rwx", "mode must be one of read, read_write"),
        ("/srv/logs/a\x00b", "read", "not printable"),
    ],
)
def test_a_grant_that_escapes_or_names_nothing_is_refused_with_the_reason(path: str, mode: str, why: str) -> None:
    with pytest.raises(GrantRefused, match=why) as err:
        match_grant(path, mode, ROOTS)
    assert err.value.code == "grant_refused"


def test_a_resolved_path_outside_its_root_is_refused_and_inside_becomes_a_mount() -> None:
    grant = match_grant("/symbi/data/logs/app", "read", ROOTS)
    with pytest.raises(GrantRefused, match="outside data root logs"):
        mount_of(grant, "/etc")
    with pytest.raises(GrantRefused):
        mount_of(grant, "/srv/logsbis/app")  # a sibling sharing the prefix is outside
    mount = mount_of(grant, "/srv/logs/app")
    assert (mount.source, mount.target, mount.read_only, mount.mode, mount.classification) == (
        "/srv/logs/app",
        "/symbi/data/logs/app",
        True,
        "read",
        "internal",
    )


def test_mounts_are_made_parents_first_and_a_directory_is_granted_once() -> None:
    inner = DataMount("logs", "app", "/srv/logs/app", "/symbi/data/logs/app", read_only=False)
    outer = DataMount("logs", "", "/srv/logs", "/symbi/data/logs", read_only=True)
    assert plan([inner, outer]) == (outer, inner)
    with pytest.raises(GrantRefused, match="grant each directory once"):
        plan([outer, DataMount("logs", "", "/srv/logs", "/symbi/data/logs", read_only=False)])


def test_a_data_path_is_located_in_the_deepest_grant_covering_it() -> None:
    outer = DataMount("logs", "", "/srv/logs", "/symbi/data/logs", read_only=True)
    inner = DataMount("logs", "app", "/srv/logs/app", "/symbi/data/logs/app", read_only=False)
    assert locate("logs/app/x.log", [outer, inner]) == (inner, ("x.log",))
    assert locate("/symbi/data/logs/other/y", [outer, inner]) == (outer, ("other", "y"))
    assert locate("logs", [outer]) == (outer, ())
    with pytest.raises(NotGranted, match="no filesystem grant"):
        locate("lake/orders", [outer, inner])
    with pytest.raises(NotGranted):
        locate("logs/x", [inner])  # only app/ is granted
    for bad in ("logs/../lake", "/etc/passwd", "logs/./x", ""):
        with pytest.raises(BadDataPath):
            locate(bad, [outer])


# --- on the disk ---------------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> dict[str, DataRoot]:
    (tmp_path / "logs" / "app").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("hunter2")
    (tmp_path / "logs" / "out").symlink_to(tmp_path / "secret")  # leads out of the root
    (tmp_path / "logs" / "in").symlink_to(tmp_path / "logs" / "app")  # stays inside
    (tmp_path / "logs" / "app" / "x.log").write_text("line 1\n")
    (tmp_path / "logs" / "app" / "leak").symlink_to(tmp_path / "secret" / "key")
    return load_roots({"logs": str(tmp_path / "logs")})


def test_a_symlink_leading_out_of_the_root_is_refused_and_one_inside_is_mounted_at_its_real_path(
    disk: dict[str, DataRoot], tmp_path: Path
) -> None:
    with pytest.raises(GrantRefused, match="a symlink may not lead out of a root"):
        resolve([PathAccess(path="/symbi/data/logs/out")], disk)
    [mount] = resolve([PathAccess(path="/symbi/data/logs/in", mode="read_write")], disk)
    assert (mount.source, mount.target, mount.read_only) == (
        str(tmp_path / "logs" / "app"),
        "/symbi/data/logs/in",
        False,
    )
    with pytest.raises(GrantRefused, match="not an existing directory"):
        resolve([PathAccess(path="/symbi/data/logs/missing")], disk)
    with pytest.raises(GrantRefused, match="not an existing directory"):
        resolve([PathAccess(path="/symbi/data/logs/app/x.log")], disk)  # a grant names a directory


def test_a_granted_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
    disk: dict[str, DataRoot], tmp_path: Path
) -> None:
    [mount] = resolve([PathAccess(path="/symbi/data/logs/app")], disk)
    assert mount.anchor == (disk["logs"].path, ("app",))
    base, above = mount.anchor
    assert data_files.read(base, (*above, "x.log"), 0, None, 100)[0] == b"line 1\n"
    (tmp_path / "logs" / "app").rename(tmp_path / "logs" / "app.old")
    (tmp_path / "logs" / "app").symlink_to(tmp_path / "secret")  # a writer of the root swaps it
    (tmp_path / "secret" / "x.log").write_text("secret")
    with pytest.raises(DataFileError) as err:
        data_files.read(base, (*above, "x.log"), 0, None, 100)
    assert err.value.code == "denied"


def test_data_roots_are_checked_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    roots = load_roots({"a": DataRootSettings(path=str(tmp_path / "link"), classification="phi")})
    assert roots["a"] == DataRoot("a", str(tmp_path / "a"), "phi", str(tmp_path / "link"))
    bad = {
        "Bad Name": (str(tmp_path / "a"), "not a data root name"),
        "rel": ("relative/path", "absolute"),
        "gone": (str(tmp_path / "nope"), "not an existing directory"),
        "all": ("/", "whole host"),
    }
    for name, (path, why) in bad.items():
        with pytest.raises(ConfigError, match=why) as err:
            load_roots({name: path})
        assert err.value.details["setting"] == f"sandbox.data_roots.{name}"
    with pytest.raises(ConfigError, match="roots must not nest"):
        load_roots({"a": str(tmp_path / "a"), "b": str(tmp_path / "a" / "b")})
    with pytest.raises(ConfigError, match="daemon's own directory"):
        load_roots({"a": str(tmp_path / "a")}, own=[str(tmp_path / "a" / "b")])
    # The daemon's start-up check (build_app) refuses a bad root before anything starts.
    missing = load_settings(env={"SYMBI_SANDBOX__DATA_ROOTS__LOGS": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="not an existing directory") as err:
        check_settings(missing.sandbox)
    assert err.value.details["setting"] == "sandbox.data_roots.logs"


def test_data_roots_come_from_the_settings_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    settings = load_settings(env={"SYMBI_SANDBOX__DATA_ROOTS__LOGS": str(tmp_path)})
    assert settings.sandbox.data_roots == {"logs": str(tmp_path)}
    config = tmp_path / "symbi.toml"
    config.write_text(f'[sandbox.data_roots]\nlake = {{ path = "{tmp_path}", classification = "internal" }}\n')
    lake = load_settings(config, env={}).sandbox.data_roots["lake"]
    assert lake == DataRootSettings(path=str(tmp_path), classification="internal")
    config.write_text(f'[sandbox.data_roots]\nlake = {{ path = "{tmp_path}", mode = "rw" }}\n')
    with pytest.raises(ConfigError):
        load_settings(config, env={})


def test_the_data_files_never_follow_a_symlink_and_cap_what_they_read(
    disk: dict[str, DataRoot], tmp_path: Path
) -> None:
    source = disk["logs"].path
    assert data_files.read(source, ("app", "x.log"), 0, None, 100) == (b"line 1\n", 7)
    assert data_files.read(source, ("app", "x.log"), 5, 1, 100) == (b"1", 7)
    cases = {
        ("app", "leak"): "denied",  # a symlink file
        ("out", "key"): "denied",  # a symlinked directory on the way
        ("in", "x.log"): "denied",  # even one that stays inside
        ("app", "nope"): "not_found",
        ("app",): "invalid_request",  # a directory
    }
    for parts, code in cases.items():
        with pytest.raises(DataFileError) as err:
            data_files.read(source, parts, 0, None, 100)
        assert err.value.code == code, parts
    with pytest.raises(DataFileError) as err:
        data_files.read(source, ("app", "x.log"), 0, None, 3)
    assert err.value.code == "too_large"
    os.mkfifo(tmp_path / "logs" / "app" / "fifo")
    with pytest.raises(DataFileError):  # never blocks on a FIFO
        data_files.read(source, ("app", "fifo"), 0, None, 100)
    entries, truncated = data_files.listing(source, ("app",), 10)
    assert [(e["name"], e["type"]) for e in entries] == [("fifo", "other"), ("leak", "symlink"), ("x.log", "file")]
    assert truncated is False
    assert data_files.listing(source, ("app",), 1)[1] is True


def test_the_data_files_write_in_three_modes_and_not_through_symlinks(
    disk: dict[str, DataRoot], tmp_path: Path
) -> None:
    source, uid_gid = disk["logs"].path, (os.getuid(), os.getgid())
    assert data_files.write(source, ("app", "new.txt"), b"abc", "create", uid_gid) == 3
    assert data_files.write(source, ("app", "new.txt"), b"de", "append", uid_gid) == 5
    with pytest.raises(DataFileError) as err:
        data_files.write(source, ("app", "new.txt"), b"x", "create", uid_gid)
    assert err.value.code == "exists"
    assert data_files.write(source, ("app", "new.txt"), b"z", "overwrite", uid_gid) == 1
    with pytest.raises(DataFileError) as err:
        data_files.write(source, ("app", "leak"), b"pwned", "overwrite", uid_gid)
    assert err.value.code == "denied"
    assert (tmp_path / "secret" / "key").read_text() == "hunter2"
    with pytest.raises(DataFileError) as err:
        data_files.write(source, ("out", "key2"), b"pwned", "create", uid_gid)
    assert err.value.code == "denied"
    assert not (tmp_path / "secret" / "key2").exists()


# --- the spec ------------------------------------------------------------------------------------------


def test_the_spec_mounts_each_grant_read_only_unless_granted_write() -> None:
    assigned = TaskAssigned(
        host_id="h1",
        tier="tier2",
        risk_score=0.1,
        risk_factors={},
        workload=Workload(image="img:1", command=("run",)),
        limits=ResourceLimits(),
        attempt=1,
        decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
        filesystem_access=(PathAccess(path="/symbi/data/logs"),),
    )
    view = fold_task("t1", [TaskSubmitted(agent_id="a1", input=b"", priority="normal"), assigned])
    caps = HostCapabilities(runtimes=frozenset({"runc", "runsc"}), blkio_device="/dev/vda")
    spec = build_spec(view, "h1", caps, SandboxDefaults())
    assert spec.host_config_kwargs("/x/input")["mounts"] is None  # nothing is mounted before it is decided
    ro = DataMount("logs", "", "/srv/logs", "/symbi/data/logs", read_only=True)
    rw = DataMount("logs", "app", "/srv/a:b,c", "/symbi/data/logs/app", read_only=False)
    decided = type(spec)(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "data_mounts": (ro, rw)})
    assert decided.host_config_kwargs("/x/input")["mounts"] == [
        {"Type": "bind", "Source": "/srv/logs", "Target": "/symbi/data/logs", "ReadOnly": True},
        {"Type": "bind", "Source": "/srv/a:b,c", "Target": "/symbi/data/logs/app", "ReadOnly": False},
    ]
    assert decided.hardening()["data"] == "/symbi/data/logs ro, /symbi/data/logs/app rw"
