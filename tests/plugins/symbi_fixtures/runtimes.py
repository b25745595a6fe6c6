"""Whole runtimes as real processes (``symbi up``, ``symbi run``, end-to-end tests): free service ports, a
private home, the ``symbi`` executable and its environment, and process checks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from symbi_cli.runtime_options import SERVICE_PORT_OFFSETS, RuntimeOptions
from symbi_cli.supervisor import RestartPolicy

from symbi_fixtures.agent_images import agent_image_tag


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


#: Fixed ports for tests are drawn from here: below the kernel's ephemeral range (32768 and up), so outgoing
#: connections cannot take one between the check and the bind.
TEST_PORTS = range(20_000, 32_000)


def worker_ports() -> range:
    """This pytest process's share of :data:`TEST_PORTS`: all of it, or under pytest-xdist (``-n N``) the
    worker's own N-th, so two workers of one run never draw the same port (another run may still)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return TEST_PORTS
    index = int(worker[2:]) % count
    size = len(TEST_PORTS) // count
    start = TEST_PORTS.start + index * size
    return range(start, start + size)


#: Ports this pytest process has handed out. Never handed out twice: a port checked free but not yet bound by the
#: test that drew it (a service still starting) must not go to the next fixture that asks.
_handed_out: set[int] = set()


def take_free_block(size: int) -> int:
    """The first of ``size`` consecutive ports, all free a moment ago and none handed out before by this process,
    from this worker's share of the test ports (:func:`worker_ports`)."""
    ports = worker_ports()
    for _ in range(500):
        first = random.randrange(ports.start, ports.stop - size)
        block = range(first, first + size)
        if _handed_out.isdisjoint(block) and all(_port_free(port) for port in block):
            _handed_out.update(block)
            return first
    raise RuntimeError(f"no free block of {size} ports between {ports.start} and {ports.stop}")


def take_free_port() -> int:
    """One port, as :func:`take_free_block` gives them."""
    return take_free_block(1)


def take_free_ports(count: int) -> list[int]:
    """``count`` ports, each as :func:`take_free_block` gives them."""
    return [take_free_block(1) for _ in range(count)]


@pytest.fixture
def free_base_port() -> int:
    """A base port whose service ports were all free a moment ago: base … base + 9 (the service offsets and
    room for a second replica's ports), handed out to no other fixture of this run (:func:`take_free_block`)."""
    return take_free_block(max(SERVICE_PORT_OFFSETS.values()) + 4)


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (e.g. a data directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def alive() -> Callable[[int], bool]:
    return process_alive


@pytest.fixture
def mentioning() -> Callable[[str], list[int]]:
    return processes_mentioning


@pytest.fixture
def symbi_exe() -> str:
    """The installed ``symbi`` console script of this environment."""
    exe = Path(sys.executable).parent / "symbi"
    assert exe.exists(), f"{exe} is missing; run `uv sync`"
    return str(exe)


@pytest.fixture
def cli_env() -> dict[str, str]:
    """The environment for a ``symbi`` subprocess: a private PostgreSQL, wide output, quiet services."""
    env = {k: v for k, v in os.environ.items() if k not in ("SYMBI_DATABASE_URL", "SYMBI_HOME", "SYMBI_KEYS_DIR")}
    env.update({"COLUMNS": "200", "SYMBI_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
    # The agent image tagged by its content, not the shared symbi/agent-python:1: `symbi up` builds it when
    # missing, and runtimes of other checkouts on this Docker engine keep theirs.
    env["SYMBI_RUNTIME__AGENT_IMAGE"] = agent_image_tag()
    return env


@pytest.fixture
def runtime_home() -> Iterator[Path]:
    """A fresh ``--home`` for a runtime, removed afterwards together with anything still running from it.

    Deliberately not under ``tmp_path``: every pytest session that starts resets ``/tmp/pytest-of-<user>``
    to mode 0700, and PostgreSQL (which pgserver runs as the unprivileged ``pgserver`` user when we are
    root) must be able to traverse the path to its data directory.
    """
    with tempfile.TemporaryDirectory(prefix="symbi-cli-test-") as tmp:
        home = Path(tmp) / "home"
        try:
            yield home
        finally:
            # Safety net for a failed test: nothing it started may outlive it.
            for pid in processes_mentioning(str(home)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runtime_options(runtime_home: Path, free_base_port: int, cli_env: dict[str, str]) -> RuntimeOptions:
    """A whole runtime in ``runtime_home`` on free ports (NATS too), restarting crashed services at once, with a
    short grace period and an audit checkpoint every second; ``options.env`` is also the environment for
    ``symbi`` commands run against it."""
    return RuntimeOptions(
        home=runtime_home,
        base_port=free_base_port,
        nats_port=None,
        grace_period=5.0,
        restart=RestartPolicy(initial_backoff=0.1),
        # SYMBI_HOME: `symbi` commands run with this environment find the home's operator token.
        env=dict(cli_env, SYMBI_AUDIT__CHECKPOINT_INTERVAL_S="1", SYMBI_HOME=str(runtime_home)),
    )
