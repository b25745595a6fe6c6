"""Output of a sandbox: chunks of at most 64 KiB per event, a size cap, and the digest. Pure.

The workload's stdout is the task's result and its stderr the log. Both go out as
``execution.output`` events (a megabyte result would not fit one event), except what :meth:`flush`
returns when the output ends, which rides in the terminal event (its ``tail``); the terminal event
carries the sizes and SHA-256 of both so a reader can check it reassembled them intact. Past
``cap`` bytes (both streams together) the rest is dropped and :attr:`OutputCollector.exceeded`
is set: the caller then kills the sandbox.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from symbi_contracts.sandbox_agent.events import OutputDigest

Stream = Literal["stdout", "stderr"]
CHUNK_BYTES = 64 * 1024
STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}
#: How much of the end of stderr is kept for the reason of a failed exit, and how long that reason may be.
TAIL_BYTES = 4096
REASON_CHARS = 500


class OutputCollector:
    def __init__(self, cap: int, chunk: int = CHUNK_BYTES) -> None:
        if cap < 0 or chunk <= 0:
            raise ValueError("cap must be >= 0 and chunk > 0")
        self.cap = cap
        self.chunk = chunk
        self.total = 0
        self.exceeded = False
        self._pending: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._sizes: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._hashes = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
        self._tail = bytearray()

    def feed(self, stream: Stream, data: bytes) -> list[tuple[Stream, bytes]]:
        """Take what the workload printed; returns the full chunks now ready to emit."""
        room = self.cap - self.total
        if len(data) > room:
            data = data[: max(room, 0)]
            self.exceeded = True
        if not data:
            return []
        self.total += len(data)
        self._sizes[stream] += len(data)
        self._hashes[stream].update(data)
        if stream == "stderr":
            self._tail += data
            del self._tail[:-TAIL_BYTES]
        pending = self._pending[stream]
        pending += data
        out: list[tuple[Stream, bytes]] = []
        while len(pending) >= self.chunk:
            out.append((stream, bytes(pending[: self.chunk])))
            del pending[: self.chunk]
        return out

    def flush(self) -> list[tuple[Stream, bytes]]:
        """The partial chunks held back (emit them when the workload goes quiet or ends)."""
        out: list[tuple[Stream, bytes]] = []
        for stream, pending in self._pending.items():
            if pending:
                out.append((stream, bytes(pending)))
                pending.clear()
        return out

    def last_error_line(self) -> str:
        """The last line the workload logged on stderr (not an action request), printable and shortened: what
        a failed exit reports as its reason (e.g. a DSL body's ``file:line:column: message``)."""
        for line in reversed(bytes(self._tail).splitlines()):
            text = line.decode("utf-8", errors="replace").strip()
            if text and not text.startswith("@symbi "):
                text = "".join(c if c.isprintable() else "?" for c in text)
                return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"
        return ""

    def digest(self) -> OutputDigest:
        return OutputDigest(
            stdout_bytes=self._sizes["stdout"],
            stdout_sha256=self._hashes["stdout"].hexdigest(),
            stderr_bytes=self._sizes["stderr"],
            stderr_sha256=self._hashes["stderr"].hexdigest(),
            truncated=self.exceeded,
        )
