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
from typing import Any, BinaryIO

from symbi_agent import _wire
from symbi_agent.data import Data
from symbi_agent.errors import ChannelError
from symbi_agent.namespaces import Knowledge, Memory, Messages, Models, Tools, Web


class _SocketLines:
    def __init__(self, path: str, timeout: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise ChannelError(f"cannot connect to the channel socket {path}: {exc}") from None
        self.file = self.sock.makefile("rwb")

    def exchange(self, line: bytes) -> bytes:
        self.file.write(line)
        self.file.flush()
        return self.file.readline(_wire.MAX_LINE_BYTES)

    def close(self) -> None:
        try:
            self.file.close()  # flushes what is buffered: fails on a channel its host closed
        except OSError:
            pass
        finally:
            self.sock.close()


class _StdioLines:
    """The fallback: requests on stderr after ``@symbi ``, answers on stdin (stdout stays the result)."""

    def __init__(self, stdin: BinaryIO | None = None, stderr: BinaryIO | None = None) -> None:
        self.stdin = stdin or sys.stdin.buffer
        self.stderr = stderr or sys.stderr.buffer

    def exchange(self, line: bytes) -> bytes:
        self.stderr.write(_wire.STDIO_PREFIX + line)
        self.stderr.flush()
        return self.stdin.readline(_wire.MAX_LINE_BYTES)

    def close(self) -> None:
        pass


class Agent:
    """A connection to the agent's gateway. ``socket_path``: a path (default ``$SYMBI_SOCKET``); ``stdio=True``
    forces the stdio channel. Without a socket, or when ``$SYMBI_SOCKET`` cannot be connected to (e.g. a
    gVisor sandbox without host sockets), the client falls back to stdio."""

    def __init__(self, socket_path: str | None = None, *, stdio: bool = False, timeout: float | None = 60.0) -> None:
        path = None if stdio else (socket_path or _wire.socket_path())
        self._lines: _SocketLines | _StdioLines = _StdioLines()
        if path:
            try:
                self._lines = _SocketLines(path, timeout)
            except ChannelError:
                if socket_path:  # asked for by name: no silent fallback
                    raise
        self.channel = "socket" if isinstance(self._lines, _SocketLines) else "stdio"
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
        request_id = _wire.next_id()
        line = _wire.encode_request(request_id, op, args or {}, context)
        with self._lock:
            try:
                answer = self._lines.exchange(line)
            except OSError as exc:
                raise ChannelError(f"the channel failed during {op}: {exc}") from None
        if not answer:
            raise ChannelError(f"the channel closed before {op} was answered")
        reply = _wire.decode_reply(answer)
        if reply.get("id") not in (request_id, None):
            raise ChannelError(f"answer for request {reply.get('id')!r} while waiting for {request_id}")
        return _wire.unwrap(reply)

    def hello(self) -> dict[str, Any]:
        """Negotiate the version; the answer names the agent, the task and the operations offered."""
        result: dict[str, Any] = self.call("hello", {"versions": [_wire.PROTOCOL_VERSION], "client": _client()})
        return result

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _client() -> str:
    return f"symbi-agent-python/0.1 (pid {os.getpid()})"
