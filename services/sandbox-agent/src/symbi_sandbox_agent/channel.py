"""The per-sandbox channel: a host directory bind-mounted into one container, holding a Unix socket that
this daemon serves for that container alone (docs/agent-protocol.md).

Identity: the caller is the agent of the run whose listener accepted the connection — never anything the
caller sends, and not ``SO_PEERCRED`` (under gVisor it names the gofer). The directory is ``0700`` and owned
by the sandbox's uid:gid (root, the daemon, passes anyway); the socket is ``0600`` with the same owner.
Bounds: a request line is read up to :data:`~symbi_contracts.agent_protocol.MAX_REQUEST_BYTES` (the rest
is skipped and the request answered ``request_too_large``), and at most
:data:`~symbi_contracts.agent_protocol.MAX_IN_FLIGHT` requests of the sandbox are served at once: past
that the channel stops reading its connections (the kernel's socket buffer then blocks the writer), so
memory does not grow with what the workload sends; and at most :data:`MAX_CONNECTIONS` connections are open
at once (a further one is answered ``too_many_requests`` and closed). The directory is removed when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from symbi_contracts.agent_protocol import (
    MAX_IN_FLIGHT,
    MAX_REQUEST_BYTES,
    SOCKET_NAME,
    Reply,
    encode_reply,
    error,
)

from symbi_sandbox_agent.actions import RequestLine, RequestLines

log = structlog.get_logger(__name__)

Answer = Callable[[RequestLine, str], Awaitable[Reply]]
#: Told, after each answer, whether it was written to the connection (in the kernel's socket buffer) or not.
Written = Callable[[Reply, bool], Awaitable[None]]
READ_CHUNK = 64 * 1024
#: Connections one sandbox may hold open at once (each may buffer up to one request line).
MAX_CONNECTIONS = 8


def prepare_root(root: str) -> None:
    """The directory holding every channel directory of this host: the daemon's own, ``0700``."""
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{root} must be owned by this daemon and not writable by others")


class Channel:
    """One sandbox's socket listener; :meth:`open` before the container is created, :meth:`close` after."""

    def __init__(
        self,
        directory: str,
        owner: tuple[int, int],
        answer: Answer,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_connections: int = MAX_CONNECTIONS,
        written: Written | None = None,
    ) -> None:
        self.written = written
        self.max_connections = max_connections
        self.directory = Path(directory)
        self.path = self.directory / SOCKET_NAME
        self.owner = owner
        self.answer = answer
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._requests: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        prepare_root(str(self.directory.parent))
        shutil.rmtree(self.directory, ignore_errors=True)  # a leftover of an earlier run of the same attempt
        self.directory.mkdir(mode=0o700)
        os.chown(self.directory, *self.owner)
        # asyncio's stream limit (64 KiB) is raised above the protocol's own cap, which _read enforces.
        self.server = await asyncio.start_unix_server(self._accept, path=str(self.path), limit=MAX_REQUEST_BYTES + 1)
        os.chown(self.path, *self.owner)
        os.chmod(self.path, 0o600)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:
            message = f"a sandbox may hold at most {self.max_connections} channel connections open"
            writer.write(encode_reply(error(None, "too_many_requests", message)))
            writer.close()
            return
        self._connections.add(task)
        # drain() then waits until nothing of a reply is left in this process (no polling for it): the kernel
        # has it, which the peer reads even if this daemon dies right after (what ``written`` is told relies on).
        writer.transport.set_write_buffer_limits(high=0)
        try:
            await self._read(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # (cancelled: the channel is closing. Ending normally, not cancelled, matters: asyncio 3.11's
            # stream callback fails on a cancelled connection task and leaves its transport open.)
            pass
        finally:
            self._connections.discard(task)
            writer.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = RequestLines(MAX_REQUEST_BYTES, prefix=b"")
        mine: set[asyncio.Task[None]] = set()  # this connection's requests being served
        while chunk := await reader.read(READ_CHUNK):
            for line in lines.feed(chunk):
                await self.in_flight.acquire()  # backpressure: no more reading until a request is done
                task = asyncio.get_running_loop().create_task(self._serve(line, writer))
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)
                mine.add(task)
                task.add_done_callback(mine.discard)
        # End of input (the client may only have shut down its writing side): its requests are answered before
        # the connection is closed, as they are performed and recorded anyway.
        if mine:
            await asyncio.wait(set(mine))

    async def _serve(self, line: RequestLine, writer: asyncio.StreamWriter) -> None:
        reply: Reply | None = None
        ok = False
        try:
            reply = await self.answer(line, "socket")
            if not writer.is_closing():
                writer.write(encode_reply(reply))
                await writer.drain()  # (until the buffer is empty: see _accept; an agent not reading costs nothing)
                ok = not writer.is_closing() and not writer.transport.get_write_buffer_size()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("serving a channel request failed", channel=str(self.directory))
        finally:
            self.in_flight.release()
        if reply is not None and self.written is not None:
            try:
                await self.written(reply, ok)
            except Exception:
                log.exception("settling a written answer failed", channel=str(self.directory))

    async def drain(self, grace_s: float) -> None:
        """Stop accepting; let the requests being served finish (up to ``grace_s``), then stop the rest."""
        if self.server is not None:
            self.server.close()
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=grace_s)
        for task in [*self._requests, *self._connections]:
            task.cancel()
        for task in [*self._requests, *self._connections]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        """Stop serving and remove the directory (idempotent)."""
        await self.drain(0.0)
        shutil.rmtree(self.directory, ignore_errors=True)
