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
import contextlib
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


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class Forwarder:
    """Listens on ``host:port`` and carries every connection to the Unix socket ``socket_path``."""

    def __init__(self, socket_path: str, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        """Start listening; the port (useful with ``port=0``)."""
        self.server = await asyncio.start_server(self._carry, self.host, self.port, limit=READ_SIZE)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path, limit=READ_SIZE)
        except OSError as exc:
            body = f"the egress proxy socket {self.socket_path} cannot be reached: {exc}\n".encode()
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            writer.close()
            return
        up = asyncio.ensure_future(_copy(reader, up_writer))
        await _copy(up_reader, writer)
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await up
        for w in (writer, up_writer):
            w.close()

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
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
