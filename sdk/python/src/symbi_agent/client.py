"""The synchronous client: ``Agent()`` connects to ``$SYMBI_SOCKET`` (or falls back to stdio) and acts.

    from symbi_agent import Agent

    with Agent() as agent:
        stored = agent.memory.store("the launch is Friday", collection="notes")
        found = agent.memory.recall("launch", collection="notes")

One request at a time per client (a lock keeps threads from interleaving); use :class:`AsyncAgent` for
several in flight.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, BinaryIO

from symbi_agent import _wire
from symbi_agent.data import Data
from symbi_agent.deadlines import Deadlines, resolve
from symbi_agent.errors import ChannelError, ChannelTimeout
from symbi_agent.namespaces import Knowledge, Memory, Messages, Models, Tools, Web

#: Seconds to connect to the channel socket, unless ``timeout`` says otherwise.
CONNECT_TIMEOUT_S = 10.0


class _SocketLines:
    """One connection to the channel socket; an answer is read within the call's deadline, as a whole."""

    def __init__(self, path: str, connect_timeout: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(connect_timeout)
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise ChannelError(f"cannot connect to the channel socket {path}: {exc}") from None
        self._buffer = bytearray()

    def exchange(self, line: bytes, deadline_s: float | None) -> bytes:
        """The answer line (``b""`` if the gateway closed the channel); :class:`TimeoutError` past the deadline."""
        end = None if deadline_s is None else time.monotonic() + deadline_s
        self.sock.settimeout(deadline_s)
        self.sock.sendall(line)
        while (newline := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > _wire.MAX_LINE_BYTES:
                raise ChannelError(f"the gateway sent an answer longer than {_wire.MAX_LINE_BYTES} bytes")
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self._buffer += chunk
        answer = bytes(self._buffer[: newline + 1])
        del self._buffer[: newline + 1]
        return answer

    def close(self) -> None:
        self.sock.close()


class _StdioLines:
    """The fallback: requests on stderr after ``@symbi ``, answers on stdin (stdout stays the result)."""

    def __init__(self, stdin: BinaryIO | None = None, stderr: BinaryIO | None = None) -> None:
        self.stdin = stdin or sys.stdin.buffer
        self.stderr = stderr or sys.stderr.buffer

    def exchange(self, line: bytes, deadline_s: float | None) -> bytes:
        """(Without a deadline: stdin cannot be read with one, nor opened again after a late answer.)"""
        self.stderr.write(_wire.STDIO_PREFIX + line)
        self.stderr.flush()
        return self.stdin.readline(_wire.MAX_LINE_BYTES)

    def close(self) -> None:
        pass


class Agent:
    """A connection to the agent's gateway. ``socket_path``: a path (default ``$SYMBI_SOCKET``); ``stdio=True``
    forces the stdio channel. Without a socket, or when ``$SYMBI_SOCKET`` cannot be connected to (e.g. a
    gVisor sandbox without host sockets), the client falls back to stdio.

    Each call on the socket waits for its answer up to its deadline (``deadlines``, by default the longest the
    gateway may take for that operation plus a margin; ``timeout``, when given, is every call's deadline and
    the connect timeout instead). Past it the call raises :class:`ChannelTimeout` and the connection is
    dropped; the next call opens a new one. A request longer than the gateway reads is refused before it is
    sent (:class:`~symbi_agent.errors.RequestTooLarge`)."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        stdio: bool = False,
        timeout: float | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._path = None if stdio else (socket_path or _wire.socket_path())
        self._deadlines = resolve(deadlines, timeout)
        self._connect_timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
        self._socket: _SocketLines | None = None
        self._closed = False
        if self._path:
            try:
                self._socket = _SocketLines(self._path, self._connect_timeout)
            except ChannelError:
                if socket_path:  # asked for by name: no silent fallback
                    raise
                self._path = None
        self._stdio = None if self._path else _StdioLines()
        self.channel = "stdio" if self._stdio else "socket"
        self._limit = _wire.request_limit(self.channel)
        self._lock = threading.Lock()
        self.memory = Memory(self.call)
        self.knowledge = Knowledge(self.call)
        self.data = Data(self.call)
        self.messages = Messages(self.call)
        self.tools = Tools(self.call)
        self.http = Web(self.call)
        self.models = Models(self.call)

    def call(self, op: str, args: dict[str, Any] | None = None, context: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result, or raise its typed error."""
        args = args or {}
        request_id = _wire.next_id()
        line = _wire.encode_request(request_id, op, args, context)
        _wire.check_size(line, op, self._limit)
        deadline = self._deadlines.for_call(op, args)
        with self._lock:
            return _wire.unwrap(self._exchange(op, request_id, line, deadline))

    def _exchange(self, op: str, request_id: int, line: bytes, deadline: float) -> dict[str, Any]:
        lines = self._stdio or self._connected()
        try:
            answer = lines.exchange(line, deadline)
            if not answer:
                raise ChannelError(f"the channel closed before {op} was answered")
            reply = _wire.decode_reply(answer)
            if reply.get("id") not in (request_id, None):
                raise ChannelError(f"answer for request {reply.get('id')!r} while waiting for {request_id}")
            return reply
        except TimeoutError:
            self._drop()
            raise ChannelTimeout(f"no answer to {op} within {deadline:g} s; the connection was dropped") from None
        except OSError as exc:
            self._drop()
            raise ChannelError(f"the channel failed during {op}: {exc}") from None
        except ChannelError:
            self._drop()  # out of step with the gateway: never read this stream again
            raise

    def _connected(self) -> _SocketLines:
        if self._closed:
            raise ChannelError("the client is closed")
        if self._socket is None:
            assert self._path is not None
            self._socket = _SocketLines(self._path, self._connect_timeout)
        return self._socket

    def _drop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def hello(self) -> dict[str, Any]:
        """Negotiate the version; the answer names the agent, the task and the operations offered."""
        result: dict[str, Any] = self.call("hello", {"versions": [_wire.PROTOCOL_VERSION], "client": _client()})
        self._limit = _wire.request_limit(self.channel, result)
        return result

    def close(self) -> None:
        self._closed = True
        self._drop()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _client() -> str:
    return f"symbi-agent-python/0.1 (pid {os.getpid()})"
