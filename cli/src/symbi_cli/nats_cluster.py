"""A JetStream cluster of nats-servers on one host (loopback), each a :class:`NatsServer`::

    with NatsCluster(Path(".symbi/cluster")) as cluster:
        print(cluster.urls)            # every member's client URL
        cluster.kill(1)                # kill -9 the second member
        cluster.restart(1)             # back on the same ports, with the same store

Members are named ``n0`` … ``n<size-1>``; every one lists every route, so any member can be restarted
alone and find the others. Routes need the cluster's route password (:attr:`NatsCluster.route_password`,
random unless given): a server on the host that knows the route ports but not the password cannot join
and read the cluster's messages. JetStream fsyncs every write before acknowledging it (``sync_interval:
always``) unless told otherwise: with the default policy a power-loss-style crash of a majority can
lose acknowledged writes (Jepsen's analysis of NATS 2.12).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import nats.errors
import nats.js.errors

from symbi_cli.errors import InfraError
from symbi_cli.nats_server import SYNC_ALWAYS, ClusterRoutes, NatsServer

#: How often to try again when a route port picked as free was taken before the server bound it.
_PORT_ATTEMPTS = 3


#: Where the kernel's ephemeral ports start when /proc does not say (Linux's default).
EPHEMERAL_LOW = 32768


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_LOW


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now, below the kernel's ephemeral range.

    A port the kernel picked for a port-0 bind would go back into its pool when released here, and any process
    binding port 0 or connecting out before the server binds it could get it ("address already in use" when
    the server starts). Ports below the ephemeral range are handed out only to those who name them.
    """
    top = _ephemeral_low()
    bottom = max(1024, top - 20_000)
    rng = secrets.SystemRandom()
    held: list[socket.socket] = []
    try:
        for _ in range(100 * count):
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind((host, rng.randrange(bottom, top)))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        if len(held) < count:
            raise InfraError(f"no {count} free ports between {bottom} and {top} on {host}")
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port free on ``host`` right now, below the kernel's ephemeral range (:func:`free_ports`)."""
    return free_ports(1, host)[0]


class NatsCluster:
    """``size`` nats-servers in one JetStream cluster, stores under ``base_dir/n<i>/``, logs next to them.

    ``config`` is more configuration text for every member (e.g. an ``authorization`` block); each
    member's HTTP monitoring endpoint is open (``members[i].monitoring_url``). Members accept routes only
    with ``route_password`` (a fresh random one when not given), kept across a member's restart. The
    route ports are picked free before the start (JetStream needs every route configured up front);
    client ports are chosen by the servers and kept across a member's restart.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        name: str = "symbi",
        host: str = "127.0.0.1",
        sync_interval: str | None = SYNC_ALWAYS,
        config: str = "",
        startup_timeout: float = 30.0,
        route_password: str | None = None,
    ) -> None:
        if size < 1:
            raise InfraError(f"a cluster needs at least one member, not {size}")
        self.base_dir = Path(base_dir)
        self.size = size
        self.name = name
        self.host = host
        self.sync_interval = sync_interval
        self.config = config
        self.startup_timeout = startup_timeout
        #: What a server must present to join the cluster as a route (user ``nats_server.ROUTE_USER``).
        self.route_password = route_password if route_password is not None else secrets.token_urlsafe(24)
        self._route_ports: list[int] = []
        self._client_ports: list[int | None] = [None] * size
        self.members: list[NatsServer] = []

    # --- whole cluster ----------------------------------------------------------------------------

    def start(self) -> NatsCluster:
        """Start every member; returns once each accepts client connections (JetStream may still be
        electing its meta leader: see :func:`wait_for_jetstream`)."""
        if self.members:
            raise InfraError("the cluster is already started")
        for attempt in range(_PORT_ATTEMPTS):
            self._route_ports = free_ports(self.size, self.host)
            self.members = [self._member(i) for i in range(self.size)]
            try:
                for member in self.members:
                    member.start()
            except InfraError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt + 1 == _PORT_ATTEMPTS:
                    raise
                continue
            break
        self._client_ports = [m.client_port for m in self.members]
        return self

    def stop(self) -> None:
        """Stop every member (SIGTERM, SIGKILL after a while); a frozen one is resumed first. Idempotent."""
        for member in self.members:
            if member.running:
                member.send_signal(signal.SIGCONT)
            member.stop()
        self.members = []

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- members ----------------------------------------------------------------------------------

    @staticmethod
    def member_name(index: int) -> str:
        """The server name of member ``index`` (what JetStream reports as a stream's leader)."""
        return f"n{index}"

    def index_of(self, server_name: str) -> int:
        """The member named ``server_name``."""
        for i in range(self.size):
            if self.member_name(i) == server_name:
                return i
        raise InfraError(f"no member of the cluster is named {server_name!r}")

    @property
    def urls(self) -> list[str]:
        """Every member's client URL (running or not: a restarted member comes back on the same port)."""
        ports = self._client_ports
        if not self.members or any(p is None for p in ports):
            raise InfraError("the cluster is not running")
        return [f"nats://{self.host}:{port}" for port in ports]

    def _routes(self) -> tuple[str, ...]:
        return tuple(f"nats-route://{self.host}:{port}" for port in self._route_ports)

    def _member(self, index: int) -> NatsServer:
        directory = self.base_dir / self.member_name(index)
        return NatsServer(
            directory / "store",
            port=self._client_ports[index],
            host=self.host,
            log_file=directory / "nats.log",
            startup_timeout=self.startup_timeout,
            server_name=self.member_name(index),
            cluster=ClusterRoutes(self.name, self._route_ports[index], self._routes(), self.route_password),
            sync_interval=self.sync_interval,
            config=self.config,
            monitoring=True,
        )

    def _running(self, index: int) -> NatsServer:
        member = self.members[index]
        if not member.running:
            raise InfraError(f"member {self.member_name(index)} is not running")
        return member

    def kill(self, index: int) -> None:
        """``kill -9`` member ``index``."""
        self._running(index).kill()

    def freeze(self, index: int) -> None:
        """``SIGSTOP`` member ``index``: it stays connected but answers nothing until :meth:`thaw`."""
        self._running(index).send_signal(signal.SIGSTOP)

    def thaw(self, index: int) -> None:
        """``SIGCONT`` member ``index`` after :meth:`freeze`."""
        self._running(index).send_signal(signal.SIGCONT)

    def restart(self, index: int) -> NatsServer:
        """Start member ``index`` again (after :meth:`kill`): same name, ports and store."""
        if self.members[index].running:
            raise InfraError(f"member {self.member_name(index)} is still running; kill or stop it first")
        member = self._member(index)
        self.members[index] = member
        return member.start()

    def pids(self) -> Sequence[int | None]:
        return [m.pid for m in self.members]


# --- asking the cluster (any JetStream context of a client connected to it) ----------------------


#: How long one probe of :func:`wait_for_jetstream` waits for an answer. Before the cluster has a meta leader a
#: JetStream request gets none, so a probe with a caller's longer timeout held the wait that long (10 s) after
#: the leader was there (1-2 s after a cluster starts).
PROBE_TIMEOUT_S = 1.0


async def wait_for_jetstream(nc: Any, *, timeout: float = 60.0) -> None:
    """Wait until the cluster answers JetStream API calls on connection ``nc`` (it has elected its meta leader)."""
    js = nc.jetstream(timeout=PROBE_TIMEOUT_S)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await js.account_info()
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise InfraError(f"the JetStream cluster did not answer within {timeout:g} s: {exc!r}") from None
        await asyncio.sleep(0.25)


async def stream_leader(js: Any, stream: str, *, timeout: float = 60.0, replicas: int | None = None) -> str:
    """The server name of ``stream``'s leader, once it has one and (with ``replicas``) that many peers
    are current: the leader and ``replicas - 1`` followers that are online and caught up."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while True:
        try:
            info = await js.stream_info(stream)
            cluster = info.cluster
            leader = cluster.leader if cluster is not None else None
            if leader:
                peers = (cluster.replicas or []) if cluster is not None else []
                current = 1 + sum(1 for p in peers if p.current and not p.offline)
                if replicas is None or current >= replicas:
                    return str(leader)
                last = f"leader {leader}, {current} of {replicas} replicas current"
            else:
                last = "no leader"
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise InfraError(f"stream {stream} is not ready within {timeout:g} s: {last}")
        await asyncio.sleep(0.25)
