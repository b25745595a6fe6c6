"""Filesystem grants and data requests against a hostile workload (docs/grants.md, docs/agent-protocol.md "Data").

- A ``read`` grant inside a ``read_write`` grant of the same definition is refused: whoever writes the parent
  can rename a directory on the way to the child, carrying its read-only mount away, then write the child's
  files through the parent (from the sandbox, or by ``data.write``).
- ``size_bytes`` of a ``data.*`` decision is the runtime's alone: what a read may return, taken from the file
  before deciding; an agent's own value (or ``path``, ``access``) is dropped.
- ``data.list`` keeps in memory only what it shows, however large the directory, and the data requests run on
  threads of their own, a bounded number per run.

Real Docker (runc and gVisor), real NATS and real Cedar policies, as in test_data_grants.py; the listing and
the threads are tested on a real directory, without a container.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import PathAccess
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionRefused
from symbi_sandbox_agent import data_files
from symbi_sandbox_agent.data_ops import RUN_DATA_THREADS, DataOps
from symbi_sandbox_agent.data_roots import load_roots, resolve
from symbi_sandbox_agent.grants import DataMount, GrantRefused, plan

from .conftest import Scheduler, running_agent
from .test_actions import BASELINE, actions, context_service, register_policies
from .test_channel import agent_image

__all__ = ["agent_image", "context_service"]  # fixtures, used by name

NESTED = "cannot stay read-only"


# --- 1. a read grant inside a writable one ------------------------------------------------------------------


def mount(rel: str, read_only: bool, source: str = "") -> DataMount:
    target = "/".join(("/symbi/data/logs", rel)) if rel else "/symbi/data/logs"
    return DataMount("logs", rel, source or target.replace("/symbi/data", "/srv"), target, read_only=read_only)


def test_a_read_grant_inside_a_read_write_grant_is_refused_and_the_reverse_is_mounted() -> None:
    parent, child = mount("", read_only=False), mount("a/b", read_only=True)
    for order in ([parent, child], [child, parent]):
        with pytest.raises(GrantRefused, match=NESTED) as refused:
            plan(order)
        assert "/symbi/data/logs/a/b (mode read) lies inside /symbi/data/logs (mode read_write)" in str(refused.value)
    # Nested the other way (writable inside read-only), beside each other, or in another root: as before.
    ro_parent, rw_child = mount("", read_only=True), mount("a/b", read_only=False)
    assert plan([rw_child, ro_parent]) == (ro_parent, rw_child)
    beside = (mount("a", read_only=False), mount("ab", read_only=True), mount("b/c", read_only=True))
    assert plan(beside) == (beside[0], beside[1], beside[2])
    other = DataMount("lake", "", "/data/lake", "/symbi/data/lake", read_only=True)
    assert plan([parent, other]) == (other, parent)
    # By its real directory too: a read grant named through a symlink to a writable grant's subdirectory.
    aliased = mount("alias", read_only=True, source="/srv/logs/w/b")
    with pytest.raises(GrantRefused, match=NESTED):
        plan([mount("w", read_only=False), aliased])


def test_a_read_grant_reaching_into_a_writable_one_through_a_symlink_is_refused_on_the_disk(tmp_path: Path) -> None:
    (tmp_path / "logs" / "w" / "b").mkdir(parents=True)
    (tmp_path / "logs" / "alias").symlink_to(tmp_path / "logs" / "w" / "b")  # inside the root: mountable alone
    roots = load_roots({"logs": str(tmp_path / "logs")})
    alias = PathAccess(path="/symbi/data/logs/alias")
    assert [m.source for m in resolve([alias], roots)] == [str(tmp_path / "logs" / "w" / "b")]
    with pytest.raises(GrantRefused, match=NESTED):
        resolve([alias, PathAccess(path="/symbi/data/logs/w", mode="read_write")], roots)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """A data root ``logs`` writable by the sandbox's user, with a root-owned file in a/b/."""
    root = tmp_path / "roots" / "logs"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "secret").write_text("protected\n")
    for d in (root, root / "a"):
        d.chmod(0o777)
    return root


def logs_settings(make: Callable[..., Settings], root: Path) -> Settings:
    return make(
        SYMBI_POLICY__ENFORCEMENT="embedded",
        SYMBI_POLICY__DECISION_LOG="false",
        SYMBI_SANDBOX__DATA_ROOTS__LOGS=str(root),
    )


#: What the workload would do if it were started: move the read-only grant away, then overwrite its file.
MOVE_AND_OVERWRITE = r"""
mv /symbi/data/logs/a /symbi/data/logs/c && echo > /symbi/data/logs/c/b/secret
"""


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_a_definition_with_a_read_grant_inside_a_writable_one_is_refused_and_nothing_runs(
    tier: str, logs: Path, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text()})
    nested = (
        PathAccess(path="/symbi/data/logs", mode="read_write"),
        PathAccess(path="/symbi/data/logs/a/b", mode="read"),
    )
    async with running_agent(logs_settings(agent_settings, logs)) as agent:
        task_id = await scheduler.submit(
            agent.host_id, ["sh", "-c", MOVE_AND_OVERWRITE], tier=tier, filesystem_access=nested
        )
        refused = (await scheduler.result(task_id)).terminal
        # The writable grant alone is mounted and runs (the refusal is about the nesting, not the grants).
        task_id = await scheduler.submit(agent.host_id, ["true"], tier=tier, filesystem_access=nested[:1])
        alone = (await scheduler.result(task_id)).terminal
    assert isinstance(refused, ExecutionRefused), refused
    assert (refused.code, refused.decision) == ("grant_refused", None)
    assert NESTED in refused.reason
    assert "/symbi/data/logs/a/b (mode read) lies inside /symbi/data/logs (mode read_write)" in refused.reason
    assert (logs / "a" / "b" / "secret").read_text() == "protected\n"
    assert not (logs / "c").exists()
    assert isinstance(alone, ExecutionExited), alone


# --- 2. size_bytes is the runtime's ---------------------------------------------------------------------


#: Through the gateway, reports may be read only 16 bytes at a time (mounting is another decision).
SMALL_READS = """
@id("small-reads")
forbid(principal, action == Action::"data.read", resource == Data::"reports")
when { context has access && context.access == "gateway" }
unless { context has size_bytes && context.size_bytes <= 16 };
"""

RAW_REQUESTS = r"""
import json, os, socket

raw = socket.socket(socket.AF_UNIX)
raw.connect(os.environ["SYMBI_SOCKET"])
f = raw.makefile("rwb")

def ask(op, args, context):
    f.write(json.dumps({"v": 1, "id": op, "op": op, "args": args, "context": context}).encode() + b"\n")
    f.flush()
    reply = json.loads(f.readline())
    return reply["error"]["code"] if "error" in reply else len(reply["result"].get("content", ""))

out = {
    "forged": ask("data.read", {"path": "reports/q1/big.csv"}, {"size_bytes": 1}),
    "forged_all": ask("data.read", {"path": "reports/q1/big.csv"},
                      {"size_bytes": 1, "path": "q1/small.txt", "access": "mount"}),
    "small": ask("data.read", {"path": "reports/q1/small.txt"}, {"size_bytes": 99999}),
    "piece": ask("data.read", {"path": "reports/q1/big.csv", "length": 16}, {"size_bytes": 1}),
    "tail": ask("data.read", {"path": "reports/q1/big.csv", "offset": 90}, {}),
    "list": ask("data.list", {"path": "reports/q1"}, {"size_bytes": 1}),
}
print(json.dumps(out))
"""


async def test_an_agent_cannot_choose_the_size_a_read_is_decided_on(
    tmp_path: Path,
    agent_image: str,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
    context_service: Any,
) -> None:
    q1 = tmp_path / "reports" / "q1"
    q1.mkdir(parents=True)
    (q1 / "big.csv").write_bytes(b"x" * 100)
    (q1 / "small.txt").write_bytes(b"y" * 10)
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "small-reads": SMALL_READS})
    settings = agent_settings(
        SYMBI_POLICY__ENFORCEMENT="embedded",
        SYMBI_POLICY__DECISION_LOG="false",
        SYMBI_SANDBOX__DATA_ROOTS__REPORTS=str(tmp_path / "reports"),
    )
    async with running_agent(settings) as agent:
        task_id = await scheduler.submit(
            agent.host_id,
            ["python3", "-c", RAW_REQUESTS],
            actions=True,
            image=agent_image,
            filesystem_access=(PathAccess(path="/symbi/data/reports/q1"),),
        )
        r = await scheduler.result(task_id)
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    assert json.loads(r.stdout) == {
        "forged": "denied",  # decided on the 100 bytes it would return (before: on the agent's 1, and returned)
        "forged_all": "denied",
        "small": 10,  # decided on 10, whatever the agent said
        "piece": 16,
        "tail": 10,
        "list": "denied",  # a listing has no size (an agent's is dropped): this policy's `unless` does not hold
    }
    decided = [(a.outcome, a.context) for a in actions(r.events)]
    assert decided == [
        ("refused", {"access": "gateway", "path": "q1/big.csv", "size_bytes": 100}),
        ("refused", {"access": "gateway", "path": "q1/big.csv", "size_bytes": 100}),
        ("allowed", {"access": "gateway", "path": "q1/small.txt", "size_bytes": 10}),
        ("allowed", {"access": "gateway", "path": "q1/big.csv", "size_bytes": 16}),
        ("allowed", {"access": "gateway", "path": "q1/big.csv", "size_bytes": 10}),
        ("refused", {"access": "gateway", "path": "q1"}),
    ]


def test_a_read_returns_no_more_than_was_decided_even_if_the_file_grew(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"a" * 10)
    decided = data_files.readable(str(tmp_path), ("log",), 4, None, 512)
    assert decided == 6
    with (tmp_path / "log").open("ab") as grown:
        grown.write(b"b" * 10)
    assert data_files.read(str(tmp_path), ("log",), 4, None, 512, most=decided) == (b"a" * 6, 20)
    assert data_files.read(str(tmp_path), ("log",), 4, 100, 512, most=decided) == (b"a" * 6, 20)
    assert data_files.readable(str(tmp_path), ("log",), 0, 3, 512) == 3
    assert data_files.readable(str(tmp_path), ("log",), 0, None, 8) == 8  # capped: the read itself is too_large
    os.mkfifo(tmp_path / "fifo")
    for missing in (("none",), ("fifo",), ()):  # nothing a read could return; the read says why
        assert data_files.readable(str(tmp_path), missing, 0, None, 512) == 0


# --- 3. data.list is bounded, on threads of its own ----------------------------------------------------------


def test_a_listing_keeps_in_memory_only_what_it_shows(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for i in range(100_000):
        os.close(os.open(big / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    tracemalloc.start()
    try:
        entries, truncated = data_files.listing(str(tmp_path), ("big",), 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e["name"] for e in entries] == [f"f{i:06d}" for i in range(10)]
    assert truncated is True
    assert peak < 512 * 1024, f"listing 10 of 100k entries peaked at {peak} bytes"  # (before: ~30 MB)


def test_a_listing_is_sorted_typed_and_truncated_as_before(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "b.txt").write_text("abc")
    (d / "D").write_text("")
    (d / "a").mkdir()
    (d / "c").symlink_to("/etc/passwd")
    os.mkfifo(d / "e")
    everything = [
        {"name": "D", "type": "file", "size": 0},
        {"name": "a", "type": "dir"},
        {"name": "b.txt", "type": "file", "size": 3},
        {"name": "c", "type": "symlink"},
        {"name": "e", "type": "other"},
    ]
    for limit, truncated in ((0, True), (1, True), (4, True), (5, False), (1000, False)):
        assert data_files.listing(str(tmp_path), ("d",), limit) == (everything[:limit], truncated)
    (tmp_path / "empty").mkdir()
    assert data_files.listing(str(tmp_path), ("empty",), 0) == ([], False)
    assert data_files.listing(str(tmp_path), ("empty",), 10) == ([], False)


async def test_data_requests_run_on_threads_of_their_own_a_few_per_run(tmp_path: Path) -> None:
    """Not on asyncio's default executor (egress DNS, the model gateway), and at most RUN_DATA_THREADS of one
    run's at once, however many it sends."""
    seen: list[str] = []
    busy: dict[int, int] = {}
    peak: dict[int, int] = {}
    lock = threading.Lock()

    def work(run: int) -> None:
        with lock:
            seen.append(threading.current_thread().name)
            busy[run] = busy.get(run, 0) + 1
            peak[run] = max(peak.get(run, 0), busy[run])
        time.sleep(0.05)
        with lock:
            busy[run] -= 1

    async def nothing(*_: Any) -> None:
        return None

    runs = [DataOps(None, nothing) for _ in range(2)]  # type: ignore[arg-type]  # (no gateway is used here)
    await asyncio.gather(*(ops._io(work, i) for i, ops in enumerate(runs) for _ in range(8)))
    assert peak == {0: RUN_DATA_THREADS, 1: RUN_DATA_THREADS}
    assert len(seen) == 16
    assert all(name.startswith("symbi-data") for name in seen)
