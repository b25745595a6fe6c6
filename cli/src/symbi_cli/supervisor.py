"""A small process supervisor: runs each service as its own OS process, restarts it when it crashes.

Each child runs in its own session (process group), so a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in order: SIGTERM to each group, a grace period, SIGKILL; a
service marked ``stop_last`` (the policy service) only once the others have ended.
On Linux every child also gets ``PR_SET_PDEATHSIG`` so that it dies with the supervisor even if the
supervisor itself is killed with SIGKILL and never gets to clean up.

Restarts back off exponentially (``initial_backoff`` doubling up to ``max_backoff``); a run that
lasted at least ``stable_after`` seconds resets the back-off. Every output line of a child and every
supervisor event is handed to callbacks, so the CLI can print them and tests can collect them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from symbi_cli.errors import SupervisorError

OutputCallback = Callable[[str, str], None]
EventCallback = Callable[[str, str, "EventKind"], None]
EventKind = Literal["info", "ready", "warning", "error"]

_READ_LIMIT = 1 << 20
#: The file-creation mask of every supervised process: new files 0600, new directories 0700.
RUNTIME_UMASK = 0o077
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to run one service."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    #: Polled after every (re)start; a 200 marks the service ready. ``None``: ready once started.
    ready_url: str | None = None
    cwd: Path | None = None
    #: Stopped only once the others have ended (the policy service: it stores their last decision-log batches).
    stop_last: bool = False


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    multiplier: float = 2.0
    #: A run that lasted this long counts as stable and resets the back-off.
    stable_after: float = 10.0

    def next_backoff(self, current: float) -> float:
        return min(current * self.multiplier, self.max_backoff)


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """A snapshot of one service, for display and tests."""

    name: str
    pid: int | None
    running: bool
    ready: bool
    starts: int
    last_exit: int | None
    backoff: float


@dataclass(slots=True)
class _Managed:
    spec: ServiceSpec
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    starts: int = 0
    last_exit: int | None = None
    backoff: float = 0.0
    task: asyncio.Task[None] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "failed to start"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # The child leads its own process group, so this reaches anything it spawned too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Supervisor:
    """Runs, restarts and stops a set of services. Use ``async with`` or ``start()``/``stop()``."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        policy: RestartPolicy | None = None,
        on_output: OutputCallback | None = None,
        on_event: EventCallback | None = None,
        grace_period: float = 10.0,
        probe_interval: float = 0.2,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        self.policy = policy or RestartPolicy()
        self.grace_period = grace_period
        self.probe_interval = probe_interval
        self._services = {s.name: _Managed(s, backoff=self.policy.initial_backoff) for s in specs}
        self._on_output = on_output or (lambda _name, _line: None)
        self._on_event = on_event or (lambda _name, _msg, _kind: None)
        self._stopping = asyncio.Event()
        self._stopped = False
        self._preexec = _die_with_parent()
        self._http: httpx.AsyncClient | None = None

    # --- public API ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._services)

    def status(self, name: str) -> ServiceStatus:
        svc = self._services[name]
        return ServiceStatus(
            name=name,
            pid=svc.proc.pid if svc.proc is not None else None,
            running=svc.running,
            ready=svc.ready,
            starts=svc.starts,
            last_exit=svc.last_exit,
            backoff=svc.backoff,
        )

    def pids(self) -> dict[str, int]:
        """Pids of the services' current processes (running or not yet reaped)."""
        return {name: svc.proc.pid for name, svc in self._services.items() if svc.proc is not None}

    def tail(self, name: str) -> list[str]:
        """The service's last output lines."""
        return list(self._services[name].tail)

    async def start(self) -> None:
        """Spawn every service; returns once each has been launched (not necessarily ready)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=2.0)
        for svc in self._services.values():
            if svc.task is None:
                started = asyncio.Event()
                svc.task = asyncio.get_running_loop().create_task(
                    self._run(svc, started), name=f"supervise:{svc.spec.name}"
                )
                await started.wait()

    async def add(self, specs: Sequence[ServiceSpec]) -> None:
        """Supervise more services, launched as :meth:`start` launches them (a runtime starts the services
        that need a database once it is up). Refused for a name already supervised, or once stopping."""
        names = [s.name for s in specs]
        taken = [n for n in names if n in self._services]
        if taken or len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {', '.join(taken) or names}")
        if self._stopping.is_set():
            raise SupervisorError("the supervisor is stopping")
        for spec in specs:
            self._services[spec.name] = _Managed(spec, backoff=self.policy.initial_backoff)
        await self.start()

    async def wait_ready(self, name: str | None = None, *, timeout: float = 60.0) -> None:
        """Wait until ``name`` (or every service) is ready; :class:`SupervisorError` on timeout or stop."""
        targets = [self._services[name]] if name else list(self._services.values())
        deadline = time.monotonic() + timeout
        while not all(svc.ready for svc in targets):
            if self._stopping.is_set():
                raise SupervisorError("the supervisor is stopping")
            if time.monotonic() > deadline:
                late = [svc for svc in targets if not svc.ready]
                details = "\n".join(self._report(svc) for svc in late)
                names = ", ".join(svc.spec.name for svc in late)
                raise SupervisorError(f"{names} not ready within {timeout:g} s\n{details}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop every service: SIGTERM, wait up to the grace period, then SIGKILL; the ``stop_last`` ones
        after the others have ended. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()  # no restarts from here on
        services = list(self._services.values())
        for wave in ([s for s in services if not s.spec.stop_last], [s for s in services if s.spec.stop_last]):
            await self._stop_wave(wave)
        for svc in services:
            # Anything a service left behind in its process group goes too.
            if svc.proc is not None:
                _signal_group(svc.proc, signal.SIGKILL)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _stop_wave(self, wave: list[_Managed]) -> None:
        for svc in wave:
            if svc.running:
                assert svc.proc is not None
                self._on_event(svc.spec.name, f"stopping (SIGTERM to pid {svc.proc.pid})", "info")
                _signal_group(svc.proc, signal.SIGTERM)
        tasks = [svc.task for svc in wave if svc.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.grace_period)
        if pending:
            for svc in wave:
                if svc.running:
                    assert svc.proc is not None
                    self._on_event(
                        svc.spec.name,
                        f"still running after {self.grace_period:.0f} s; SIGKILL to pid {svc.proc.pid}",
                        "warning",
                    )
                    _signal_group(svc.proc, signal.SIGKILL)
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- internals ----------------------------------------------------------------------------

    @staticmethod
    def _report(svc: _Managed) -> str:
        state = "running" if svc.running else describe_exit(svc.last_exit)
        return f"--- {svc.spec.name} ({svc.starts} start(s), {state}), last output:\n" + "\n".join(svc.tail)

    async def _spawn(self, spec: ServiceSpec) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(spec.env),
            cwd=spec.cwd,
            start_new_session=True,
            preexec_fn=self._preexec,
            # What a service writes (vector stores, work files, logs) is for its own user only.
            umask=RUNTIME_UMASK,
            limit=_READ_LIMIT,
        )

    async def _run(self, svc: _Managed, started: asyncio.Event) -> None:
        name = svc.spec.name
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                t0 = loop.time()
                svc.ready = False
                try:
                    proc = await self._spawn(svc.spec)
                except OSError as exc:
                    svc.last_exit = None
                    self._on_event(name, f"cannot start {svc.spec.argv[0]}: {exc}", "error")
                else:
                    svc.proc = proc
                    svc.starts += 1
                    if self._stopping.is_set():  # stop() came while this process was being spawned
                        _signal_group(proc, signal.SIGTERM)
                    self._on_event(name, f"started (pid {proc.pid})", "info")
                    started.set()
                    await self._watch(svc, proc, t0)
                    svc.last_exit = proc.returncode
                svc.ready = False
                started.set()
                if self._stopping.is_set():
                    self._on_event(name, f"stopped ({describe_exit(svc.last_exit)})", "info")
                    break
                ran = loop.time() - t0
                if ran >= self.policy.stable_after:
                    svc.backoff = self.policy.initial_backoff
                self._on_event(
                    name,
                    f"{describe_exit(svc.last_exit)} after {ran:.1f} s; restarting in {svc.backoff:g} s",
                    "error",
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), svc.backoff)
                svc.backoff = self.policy.next_backoff(svc.backoff)
        finally:
            started.set()

    async def _watch(self, svc: _Managed, proc: asyncio.subprocess.Process, t0: float) -> None:
        """Pump the output and probe readiness until the process exits."""
        assert proc.stdout is not None
        pump = asyncio.get_running_loop().create_task(self._pump(svc, proc.stdout))
        probe = asyncio.get_running_loop().create_task(self._probe(svc, proc, t0))
        try:
            await proc.wait()
        finally:
            probe.cancel()
            # Output still buffered in the pipe is worth printing; a grandchild holding the pipe open is not worth waiting for.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pump, timeout=2.0)
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    async def _pump(self, svc: _Managed, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: pass on what is there
                raw = await stream.read(_READ_LIMIT)
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            svc.tail.append(line)
            self._on_output(svc.spec.name, line)

    async def _probe(self, svc: _Managed, proc: asyncio.subprocess.Process, t0: float) -> None:
        url = svc.spec.ready_url
        if url is None:
            svc.ready = True
            return
        loop = asyncio.get_running_loop()
        while proc.returncode is None and self._http is not None:
            try:
                resp = await self._http.get(url)
                if resp.status_code == 200:
                    svc.ready = True
                    self._on_event(svc.spec.name, f"ready after {loop.time() - t0:.1f} s ({url})", "ready")
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(self.probe_interval)
