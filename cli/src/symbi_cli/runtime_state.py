"""The local runtime's state file, ``<home>/run/state.json``: the pids and addresses of what runs.

:class:`~symbi_cli.runtime.LocalRuntime` claims its home through it (a second runtime on the same home is
refused, the leftovers of one that died are stopped) and rewrites it as services start; ``symbi status``
and ``symbi run`` read it to find the runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from symbi_cli.errors import CliError, StartError
from symbi_cli.private_files import private_dir
from symbi_cli.processes import pid_alive
from symbi_cli.runtime_options import Reporter


class StatusError(CliError):
    """The runtime's state file cannot be read."""


def read_state(home: Path) -> dict[str, Any] | None:
    path = home / "run" / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StatusError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict):
        raise StatusError(f"{path} is not a JSON object")
    return state


def claim_home(home: Path, state_file: Path, reporter: Reporter) -> None:
    """Make ``home`` private and refuse it while another live runtime's state file names it.

    The state file of a runtime that died is read for its leftovers, which are stopped (see
    :func:`reap_leftovers`); the caller then writes its own state file.
    """
    # Everything under the home is for its owner only: directories 0700, files 0600.
    private_dir(home)
    private_dir(state_file.parent)
    previous: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = json.loads(state_file.read_text())
    other = previous.get("supervisor_pid")
    if isinstance(other, int) and other != os.getpid() and pid_alive(other):
        raise StartError(f"a runtime is already running from {home} (pid {other}); stop it first or use another --home")
    if previous:
        reap_leftovers(home, previous, reporter)


def reap_leftovers(home: Path, previous: Mapping[str, Any], reporter: Reporter) -> None:
    """A previous supervisor died without stopping its nats-server: stop it before reusing its store.

    (Services die with the supervisor by themselves, and pgserver reuses and later stops a
    PostgreSQL still running on the data directory.)
    """
    nats = previous.get("nats") or {}
    pid = nats.get("pid") if isinstance(nats, dict) else None
    if not isinstance(pid, int) or not pid_alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if str(home / "nats").encode() not in cmdline:
        return  # the pid was reused by something else
    reporter.step(f"stopping nats-server pid {pid} left over from a runtime that did not stop cleanly")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def write_state(state_file: Path, state: Mapping[str, object]) -> None:
    """Replace the state file atomically (written 0600 beside it, then renamed)."""
    tmp = state_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(state, indent=2) + "\n")
    tmp.replace(state_file)
