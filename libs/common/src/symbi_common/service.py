"""The service base: one runtime object that opens NATS/JetStream, keys and PostgreSQL.

A service builds a :class:`ServiceRuntime`, registers its command handlers and projections in an
``on_start`` hook, and hands it to :func:`symbi_common.service_app.create_app` (the FastAPI app with
``/healthz``, ``/readyz``, ``/metrics`` and typed error responses). On shutdown the runtime stops command
intake, lets in-flight work finish, stops the projections and the background tasks, drains NATS, runs the
closers (:meth:`ServiceRuntime.close_on_stop`) and closes the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg
import nats
import structlog

from symbi_common.aggregate import Repository
from symbi_common.commands import CommandClient, CommandServer
from symbi_common.consuming import keep_consuming
from symbi_common.crypto import Signer, WrapKey
from symbi_common.datakeys import DataKeys, KvDataKeyStore
from symbi_common.db import open_pool
from symbi_common.decisions import DecisionPoint
from symbi_common.domain import Aggregate
from symbi_common.errors import InfrastructureError, KeyringError
from symbi_common.events import Event
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry, load_signer, load_wrap_key, read_key_file
from symbi_common.livekeys import LiveKeys, previous_wrap_keys
from symbi_common.nats_client import RESILIENT_CLIENT, server_options, without_credentials
from symbi_common.natsauth import datakey_types
from symbi_common.projection import Projection, ProjectionRunner
from symbi_common.registry_changes import HOST_SERVICE
from symbi_common.settings import Settings
from symbi_common.settings_sandbox import resolve_host_id
from symbi_common.snapshots import SnapshotStore
from symbi_common.stream_provisioning import require_streams
from symbi_common.telemetry import (
    configure_logging,
    configure_tracing,
    flush_tracing,
    outside_traces,
)

log = structlog.get_logger(__name__)

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E", bound=Event)


#: How long a starting service tries to reach NATS before it gives up with a clear error.
STARTUP_CONNECT_TIMEOUT_S = 30.0


def load_service_keyring(service: str, s: Settings) -> tuple[KeyRegistry, Signer, WrapKey]:
    """The root-verified registry and this service's own keys; refuses a key the registry does not
    list as the service's active key (a rotated-out or revoked key must not sign again).

    A signing key bound to a sandbox host (``symbi keys add-host``) starts only the sandbox-agent daemon of
    that host (its resolved ``[sandbox] host_id``), and only while it is that host's active key; the wrap
    key is checked against the service's own. A host that has a key of its own does not start with the
    service's. Anything else is a :class:`KeyringError` (never a fallback to the service's key)."""
    registry = KeyRegistry.load(s.service_keys_dir(service), read_key_file(s.root_public_key_path(service)))
    signer = load_signer(s.signing_key_path(service))
    wrap_key = load_wrap_key(s.wrap_key_path(service))
    host = _bound_host(registry, service, signer.key_id, s)
    active = registry.active_key(service, host)
    if active is None or active.key_id != signer.key_id:
        whose = service if host is None else f"host {host} of {service}"
        raise KeyringError(
            f"signing key {signer.key_id} is not the active key of {whose} in the key registry "
            f"(active: {active.key_id if active else 'none'}); run `symbi keys init` or hand out the current keys"
        )
    own = registry.active_key(service) if host is not None else active
    if own is None or own.wrap_public_key != wrap_key.public_key:
        raise KeyringError(f"the wrap key of {service} does not match the key registry")
    return registry, signer, wrap_key


def _bound_host(registry: KeyRegistry, service: str, key_id: str, s: Settings) -> str | None:
    """The sandbox host ``key_id`` is bound to, if it is, checked to be this daemon's host; None: a service key."""
    host = registry.host_of(key_id)
    if host is None:
        if service == HOST_SERVICE and registry.has_host_keys(mine := resolve_host_id(s.sandbox.host_id)):
            raise KeyringError(
                f"sandbox host {mine} has a key of its own in the key registry (or had one, revoked); start its "
                f"daemon with its current key (its directory sandbox-agent@{mine}), not the service's"
            )
        return None
    if service != HOST_SERVICE:
        raise KeyringError(f"signing key {key_id} is bound to sandbox host {host}; {service} cannot start with it")
    mine = resolve_host_id(s.sandbox.host_id)
    if mine != host:
        raise KeyringError(
            f"signing key {key_id} is the key of sandbox host {host}, but this daemon is host {mine}; give host "
            f"{mine} its own directory (`symbi keys add-host {mine}`) or set [sandbox] host_id = {host!r}"
        )
    return host


class ServiceRuntime:
    """Connections, keys and background work of one running service."""

    nc: Any
    js: Any
    pool: asyncpg.Pool | None
    store: EventStore
    snapshots: SnapshotStore
    datakeys: DataKeys
    registry: KeyRegistry
    keys: LiveKeys
    commands: CommandServer
    client: CommandClient

    def __init__(self, name: str, settings: Settings, *, use_database: bool = True) -> None:
        self.name = name
        self.settings = settings
        self.use_database = use_database
        self.pool = None
        self.projections: list[ProjectionRunner] = []
        self.repositories: list[Repository[Any, Any, Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Set when :meth:`stop` begins: loops that start their work again after a failure end instead.
        self.stopping = asyncio.Event()
        self.started = False
        self.started_at = time.time()
        self.recent_errors: list[str] = []
        self._decisions: DecisionPoint | None = None
        self._decisions_lock = asyncio.Lock()
        self._health_checks: dict[str, Callable[[], bool]] = {}
        self._metric_refreshers: list[Callable[[], Awaitable[None]]] = []
        self._signer_listeners: list[Callable[[Signer], None]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._drain_closers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        s = self.settings
        self.stopping.clear()
        configure_logging(self.name, s.telemetry.log_level, s.telemetry.log_format)
        configure_tracing(self.name, s.telemetry.otlp_endpoint)
        # Keys first: a service without its keys must not touch anything.
        self.registry, signer, wrap_key = load_service_keyring(self.name, s)
        try:
            # Reconnect forever once connected, but do not hang at start-up on a wrong or dead URL.
            self.nc = await asyncio.wait_for(
                nats.connect(
                    **server_options(
                        s.nats.url, tls_ca=s.nats.tls_ca, tls_cert=s.nats.tls_cert, tls_key=s.nats.tls_key
                    ),
                    **RESILIENT_CLIENT,
                    name=f"symbi-{self.name}",
                    connect_timeout=5,
                    error_cb=self._nats_error,
                ),
                timeout=STARTUP_CONNECT_TIMEOUT_S,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise InfrastructureError(
                f"cannot connect to NATS at {without_credentials(s.nats.url)} within "
                f"{STARTUP_CONNECT_TIMEOUT_S:g} s: {exc!r}; check nats.url / SYMBI_NATS_URL"
            ) from None
        self.js = self.nc.jetstream(timeout=s.nats.request_timeout_s)
        try:
            await require_streams(self.js)  # provisioned by the NATS admin; never created here
        except BaseException:
            await self.nc.close()
            raise
        previous = previous_wrap_keys(s.wrap_key_path(self.name))  # left by `symbi keys rotate --wrap`
        self.datakeys = DataKeys(
            await KvDataKeyStore.open(self.js), wrap_key, self.registry, service=self.name, previous_wrap_keys=previous
        )
        types = datakey_types(self.name)
        # Both key followers start again after any failure: one that stopped for good would leave this process
        # trusting revoked keys, or opening data keys destroyed since. A restarted data key follower first forgets
        # every cached key (a change missed meanwhile is read from the store on the next use).
        self.spawn(
            keep_consuming(
                lambda: self.datakeys.follow_changes(types),
                self.stopping,
                what="data key changes",
                on_retry=self.datakeys.forget_all,
            ),
            "datakeys:follow",
        )
        self.store = EventStore(
            self.nc,
            signer=signer,
            producer=self.name,
            registry=self.registry,
            datakeys=self.datakeys,
            max_event_bytes=s.events.max_event_bytes,
            timeout=s.nats.request_timeout_s,
        )
        self.snapshots = SnapshotStore(self.nc, signer=signer, registry=self.registry, datakeys=self.datakeys)
        # Registry versions published while the service runs (rotation, revocation) apply live.
        self.keys = LiveKeys(
            self.name,
            self.registry,
            root_public_key=read_key_file(s.root_public_key_path(self.name)),
            signing_key_path=s.signing_key_path(self.name),
            wrap_key_path=s.wrap_key_path(self.name),
            signer=signer,
            datakeys=self.datakeys,
            on_signer=self._use_signer,
            on_error=self.note_error,
            host=self.registry.host_of(signer.key_id),  # a sandbox host's daemon follows its own key
        )
        try:
            await self.keys.start(self.nc)
        except BaseException:
            await self.nc.close()
            raise
        self.spawn(keep_consuming(lambda: self.keys.follow(self.js), self.stopping, what="key registry"), "keys:follow")
        if self.use_database:
            self.pool = await open_pool(s.database.url, min_size=s.database.pool_min, max_size=s.database.pool_max)
        self.commands = CommandServer(self.nc, self.name, max_request_bytes=s.events.max_command_bytes)
        self.client = CommandClient(self.nc, timeout=s.nats.request_timeout_s)
        self.started = True
        log.info("service started", nats=without_credentials(s.nats.url), signing_key=signer.key_id)

    def _use_signer(self, signer: Signer) -> None:
        """Sign with ``signer`` from now on (the registry named it this service's active key)."""
        self.store.signer = signer
        self.snapshots.signer = signer
        for listener in self._signer_listeners:
            listener(signer)

    def on_signer_change(self, listener: Callable[[Signer], None]) -> None:
        """Call ``listener`` with the new signing key whenever a registry version rotates this service's key
        (for whatever else the service signs with it, e.g. the audit service's checkpoints)."""
        self._signer_listeners.append(listener)

    async def _nats_error(self, exc: Exception) -> None:
        self.note_error(f"nats: {exc}")

    def note_error(self, text: str) -> None:
        """Remember a recent error for the health report (the last 20)."""
        self.recent_errors = [*self.recent_errors[-19:], f"{time.strftime('%H:%M:%S')} {text}"]

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run background work for the service's lifetime; a crash is logged, not swallowed silently."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def _done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", task=name, error=repr(t.exception()))
                self.note_error(f"{name}: {t.exception()!r}")

        task.add_done_callback(_done)
        return task

    def close_on_stop(self, close: Callable[[], Awaitable[None]], *, before_drain: bool = False) -> None:
        """Run ``close`` on shutdown once the background work has ended (a store its tasks write to must stay
        open until they have); closers run in reverse order of registration, a failure is logged.
        ``before_drain``: run it before NATS drains instead of after, for subscriptions the drain would
        otherwise wait on (a pull subscription may hold a status answer nats-py never marks done)."""
        (self._drain_closers if before_drain else self._closers).append(close)

    async def decision_point(self) -> DecisionPoint:
        """This service's policy decision point, as ``[policy] enforcement`` configures it (opened once)."""
        async with self._decisions_lock:  # two first callers must not open two followers
            if self._decisions is None:
                from symbi_common.policy import open_decision_point

                # Opened on first use, maybe inside a request: its follower and decision log live on
                # and must not file every later message under that request's trace.
                with outside_traces():
                    self._decisions = await open_decision_point(self)
        return self._decisions

    def repository(
        self, aggregate: Aggregate[S, C, E], *, data_key: Callable[[S, Sequence[E]], str | None] | None = None
    ) -> Repository[S, C, E]:
        """A repository for ``aggregate`` on this service's store, with snapshots as configured (``data_key``: see
        :class:`~symbi_common.aggregate.Repository`)."""
        repo = Repository(
            self.store,
            aggregate,
            snapshots=self.snapshots,
            snapshot_every=self.settings.events.snapshot_every,
            data_key=data_key,
        )
        self.repositories.append(repo)
        return repo

    async def add_projection(self, projection: Projection) -> ProjectionRunner:
        if self.pool is None:
            raise RuntimeError("projections need a database; create the runtime with use_database=True")
        runner = ProjectionRunner(
            self.js, self.pool, projection, service=self.name, catch_up_registry=self.keys.catch_up
        )
        await runner.setup()
        self.projections.append(runner)
        self.spawn(runner.run(), f"projection:{projection.name}")
        return runner

    def add_health_check(self, name: str, check: Callable[[], bool]) -> None:
        """Make readiness also depend on ``check()`` (e.g. a background worker that has caught up)."""
        self._health_checks[name] = check

    def add_metrics_refresh(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``refresh`` before each ``/metrics`` scrape (gauges read from a read model, e.g. agents by state)."""
        self._metric_refreshers.append(refresh)

    async def refresh_metrics(self) -> None:
        """Bring scrape-time gauges up to date; one that fails is logged and left as it was."""
        for refresh in self._metric_refreshers:
            try:
                await refresh()
            except Exception as exc:
                log.warning("metrics refresh failed", error=repr(exc))

    async def health(self) -> dict[str, Any]:
        """Readiness of each dependency; ``ok`` only if all are."""
        checks: dict[str, bool] = {"started": self.started}
        checks["nats"] = bool(self.started and self.nc.is_connected)
        if self.use_database:
            try:
                checks["database"] = self.pool is not None and await self.pool.fetchval("SELECT 1") == 1
            except Exception:
                checks["database"] = False
        for runner in self.projections:
            # Caught up once, and not halted: a read model that cannot apply its next batch serves stale state.
            checks[f"projection:{runner.projection.name}"] = runner.healthy
        for name, check in self._health_checks.items():
            checks[name] = bool(check())
        return {"ok": all(checks.values()), "checks": checks}

    async def stop(self) -> None:
        """Idempotent, orderly shutdown. Each step is bounded (:data:`STOP_STEP_TIMEOUT_S`): a step that hangs is
        logged by name and left behind, so a stop always ends and the next steps (and the pool) still close."""
        if not self.started:
            return
        self.started = False
        self.stopping.set()
        await _bounded("command intake", self.commands.stop())
        for runner in self.projections:
            await _bounded(f"projection {runner.projection.name}", runner.stop())
        for repo in self.repositories:
            await _bounded("snapshot writes", repo.drain())  # let in-flight snapshot writes finish
        if self._decisions is not None:  # flush the decision log, stop following the policy events
            close = getattr(self._decisions, "close", None)
            self._decisions = None
            if close is not None:
                await _bounded("decision point", close())
        for task in list(self._tasks):
            task.cancel()
        stuck: set[asyncio.Task[Any]] = set()
        if self._tasks:
            # Bounded: a NATS watch cancelled while it is still being set up may only end when the
            # connection closes (seen over TLS), so wait for the rest after the drain.
            _, stuck = await asyncio.wait(set(self._tasks), timeout=5.0)
        await _run_closers(self._drain_closers)
        try:
            await _bounded("NATS drain", self.nc.drain(), timeout=60.0)  # nats-py bounds it too (drain_timeout)
        except Exception as exc:  # already closed or the server went away
            log.debug("nats drain failed", error=str(exc))
        if stuck:
            _, stuck = await asyncio.wait(stuck, timeout=5.0)
            if stuck:
                log.warning("background tasks still running after stop", tasks=sorted(t.get_name() for t in stuck))
        await _run_closers(self._closers)
        if self.pool is not None:
            pool, self.pool = self.pool, None
            if not await _bounded("database pool", pool.close()):
                pool.terminate()  # a connection still held by a stuck task: closed under it
        flush_tracing()
        log.info("service stopped")


async def _run_closers(closers: list[Callable[[], Awaitable[None]]]) -> None:
    """Each of ``closers``, last registered first, each bounded; a failure is logged."""
    for close in reversed(closers):
        try:
            await _bounded("closer", close())
        except Exception as exc:
            log.warning("close on stop failed", error=repr(exc))


#: How long one step of :meth:`ServiceRuntime.stop` may take before it is left behind.
STOP_STEP_TIMEOUT_S = 15.0


async def _bounded(step: str, work: Awaitable[Any], timeout: float | None = None) -> bool:
    """Await ``work`` for ``timeout`` (:data:`STOP_STEP_TIMEOUT_S`) at most; False, and a warning naming
    ``step``, if it hung."""
    limit = STOP_STEP_TIMEOUT_S if timeout is None else timeout
    try:
        await asyncio.wait_for(work, limit)
    except TimeoutError:
        log.warning("stop step did not finish; left behind", step=step, timeout_s=limit)
        return False
    return True


#: Paths polled by probes and scrapers: no span for them (each would be a trace of its own).
