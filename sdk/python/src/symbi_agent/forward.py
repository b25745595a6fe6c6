"""The sandbox's side of the egress proxy: ``127.0.0.1:<port>`` inside the container → ``$SYMBI_EGRESS_SOCKET``.

A network-enabled sandbox has no route out (docs/network.md). The runtime runs its command as
``python3 -m symbi_agent.forward -- <command>``: this module listens on the container's own loopback (the
port of ``$HTTPS_PROXY``, default 3128), carries each connection unchanged to the egress proxy's Unix socket
in the channel directory, and runs the command with ``HTTP_PROXY``/``HTTPS_PROXY`` pointing at it, so
ordinary clients (urllib, requests, httpx, curl, OpenAI's) work. It decides nothing: every rule is the
proxy's, on the host. Stdlib only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from urllib.parse import urlsplit

EGRESS_SOCKET_ENV = "SYMBI_EGRESS_SOCKET"
DEFAULT_SOCKET = "/symbi/run/egress.sock"
DEFAULT_PORT = 3128
READ_SIZE = 256 * 1024
#: Python 3.11's socket transport copies what it cannot send at once; later ones may keep a view of it, so
#: a buffer the transport still holds part of is not reused there.
KEEPS_VIEWS = sys.version_info >= (3, 12)
#: A relay's first buffer: most connections carry one request and its answer.
FIRST_READ_SIZE = 16 * 1024


class _Relay(asyncio.BufferedProtocol):
    """One direction: what its transport reads is written to ``peer``; reading pauses while the peer's
    write buffer is full (asyncio tells the peer's protocol, which is the other relay). It reads into a
    buffer of its own, replaced only when the peer kept part of what it was given."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.other: _Relay | None = None
        self.pending = bytearray()  # bytes read before the peer was connected
        self.eof = False
        self._buffer = memoryview(bytearray(FIRST_READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self._buffer[:nbytes]
        if self.peer is None:
            self.pending += data
        else:
            self.peer.write(data)
            if (KEEPS_VIEWS and self.peer.get_write_buffer_size()) or nbytes == len(self._buffer) < READ_SIZE:
                self._buffer = memoryview(bytearray(READ_SIZE))

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None and self.peer.can_write_eof() and not self.peer.is_closing():
            self.peer.write_eof()
        if self.other is not None and self.other.eof:  # both sides are done: the connection is over
            if self.peer is not None:
                self.peer.close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _Client(_Relay):
    """The relay of an accepted client: once its transport is there, its upstream is connected."""

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self.forwarder = forwarder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self.forwarder._connect(self))
        self.forwarder.tasks.add(task)  # held: the loop keeps only a weak reference to a task
        task.add_done_callback(self.forwarder.tasks.discard)


class Forwarder:
    """Listens on ``host:port`` and carries every connection to the Unix socket ``socket_path``."""

    def __init__(self, socket_path: str, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Start listening; the port (useful with ``port=0``)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accepted, self.host, self.port, backlog=256)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def _accepted(self) -> _Relay:
        return _Client(self)

    async def _connect(self, client: _Relay) -> None:
        try:
            transport, upstream = await asyncio.get_running_loop().create_unix_connection(_Relay, self.socket_path)
        except OSError as exc:
            if client.transport is not None:
                body = f"the egress proxy socket {self.socket_path} cannot be reached: {exc}\n".encode()
                client.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                client.transport.close()
            return
        assert client.transport is not None
        assert isinstance(transport, asyncio.Transport)
        client.peer, upstream.peer = transport, client.transport
        client.other, upstream.other = upstream, client
        if client.pending:
            transport.write(bytes(client.pending))
            client.pending.clear()
        if client.eof:
            transport.write_eof()
        if client.transport.is_closing():
            transport.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def serve_in_thread(socket_path: str, port: int) -> int:
    """Run a :class:`Forwarder` on its own thread and event loop; its port once it listens."""
    ready: list[int | BaseException] = []
    started = threading.Event()

    def main() -> None:
        loop = asyncio.new_event_loop()
        forwarder = Forwarder(socket_path, port)
        try:
            ready.append(loop.run_until_complete(forwarder.start()))
        except BaseException as exc:  # reported to the caller, which exits
            ready.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    threading.Thread(target=main, name="symbi-forward", daemon=True).start()
    started.wait()
    if isinstance(ready[0], BaseException):
        raise ready[0]
    return ready[0]


def proxy_port(env: dict[str, str] | os._Environ[str]) -> int:
    """The port ``$HTTPS_PROXY`` (or ``$HTTP_PROXY``) names, else :data:`DEFAULT_PORT`."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        url = env.get(name, "")
        if url:
            port = urlsplit(url).port
            if port:
                return port
    return DEFAULT_PORT


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m symbi_agent.forward -- <command> [args...]", file=sys.stderr)
        return 2
    socket_path = os.environ.get(EGRESS_SOCKET_ENV, DEFAULT_SOCKET)
    port = serve_in_thread(socket_path, proxy_port(os.environ))
    env = dict(os.environ)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = f"http://127.0.0.1:{port}"
    child = subprocess.Popen(args, env=env)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    return 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + signal number


if __name__ == "__main__":
    sys.exit(main())
