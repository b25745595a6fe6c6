"""The OpenAI protocol as the gateway speaks it: request bodies, error answers, usage in replies and streams. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from symbi_common.bounds import nested_deeper_than

from symbi_sandbox_agent.models.errors import BadModelRequest, ModelError
from symbi_sandbox_agent.models.pricing import byte_tokens, text_tokens

JSON = "application/json"
SSE = "text/event-stream"
_decode_object = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder()
#: How deep arrays and objects may nest in a body: deeper ones could not be estimated, encoded or logged
#: (``RecursionError``), and no OpenAI request needs it.
MAX_DEPTH = 64
#: More tokens than any call has: a count beyond it is not a count (and would not fit the budget's events).
MAX_REPORTED_TOKENS = 2**40
#: The longest line of a streamed answer that is kept and read. A line is one event: a delta of a few tokens
#: (a tool call's arguments come in pieces too), or the last chunk's usage, a few KiB at the most; this is far
#: above that, and a quarter of the largest request the gateway takes from a sandbox (``max_request_bytes``,
#: 4 MiB), as one stream's tally should hold less than one request does. A longer line is counted, not read
#: (:class:`StreamTally`).
MAX_LINE_BYTES = 1 << 20
_LINE_END = re.compile(rb"\r\n|\r|\n")


def parse_body(body: bytes, limit: int) -> dict[str, Any]:
    """The request's JSON object; :class:`BadModelRequest` for anything else."""
    if len(body) > limit:
        raise BadModelRequest(f"the request body has {len(body)} bytes; the gateway reads at most {limit}")
    try:
        parsed = _decode_object.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadModelRequest(f"the request body is not a JSON object: {exc}") from None
    except RecursionError:
        raise BadModelRequest(f"the request body nests deeper than {MAX_DEPTH} levels") from None
    return check_depth(parsed)


def check_depth(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` if at most :data:`MAX_DEPTH` arrays and objects (``body`` itself the first) nest in each other;
    :class:`BadModelRequest`."""
    if nested_deeper_than(body, MAX_DEPTH):
        raise BadModelRequest(f"the request body nests deeper than {MAX_DEPTH} levels")
    return body


def _object(data: bytes) -> dict[str, Any] | None:
    """The JSON object of a provider's bytes, or None (not one, or nested too deep to read)."""
    try:
        return check_depth(_decode_object.decode(data))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, BadModelRequest):
        return None


def max_completion_tokens(body: dict[str, Any], default: int) -> int:
    """The completion tokens a chat request allows: the larger of ``max_completion_tokens`` and ``max_tokens``
    (a provider may honour either), else ``default``."""
    found = []
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REPORTED_TOKENS:
            raise BadModelRequest(f"{key} must be a whole number from 1 to {MAX_REPORTED_TOKENS}, got {value!r:.100}")
        found.append(value)
    return max(found, default=default)


def encode(value: Any) -> bytes:
    return _encode.encode(value)


def error_body(err: ModelError) -> bytes:
    """``{"error": {"message", "type", "code", …details}}`` as OpenAI clients read it."""
    detail = {k: v for k, v in err.details.items() if isinstance(v, str | int | float | bool)}
    return encode({"error": {"message": err.message, "type": err.openai_type, "code": err.code, **detail}})


@dataclass(frozen=True, slots=True)
class Reported:
    """Usage as the provider reported it (``estimated``: it did not, and the gateway counted)."""

    input_tokens: int
    output_tokens: int
    estimated: bool = False


def usage_of(reply: dict[str, Any]) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of an OpenAI reply's ``usage``, if it has a usable one.

    The provider is not trusted with the budget: a count that is not a whole number from 0 to
    :data:`MAX_REPORTED_TOKENS` (a negative one would give budget back) counts as no report, so the gateway
    counts the reply itself."""
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    return prompt, completion


def _count(value: object) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_REPORTED_TOKENS:
        return None
    return value


#: The text fields of a reply's message (or a stream's delta) that the model generated, besides its calls.
_TEXT_FIELDS = ("content", "refusal", "reasoning_content")


def reply_text(reply: dict[str, Any]) -> str:
    """Everything the model generated in a chat reply's choices, counted when no usage is reported: the text,
    a refusal, reasoning, and the name and arguments of each tool (or function) call. Counting only the
    ``content`` would make a reply of tool calls free."""
    parts: list[str] = []
    choices = reply.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        message = (choice.get("message") or choice.get("delta")) if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        parts += (message[f] for f in _TEXT_FIELDS if isinstance(message.get(f), str))
        calls = message.get("tool_calls")
        functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        functions.append(message.get("function_call"))  # the older form: one call, beside the message
        for function in functions:
            if isinstance(function, dict):
                parts += (function[f] for f in ("name", "arguments") if isinstance(function.get(f), str))
    return "".join(parts)


class StreamTally:
    """Reads a server-sent event stream as it passes: the usage of its last chunk (asked for with
    ``stream_options.include_usage``), else the text it carried, to count.

    A line ends with CR LF, LF or CR (a CR LF cut between two chunks ends one line). Each chunk is scanned
    once, and the unfinished line is kept, as its parts come, up to ``max_line_bytes`` (:data:`MAX_LINE_BYTES`).
    A longer line fails closed: it is not read, and all of its bytes, those kept and those still to come up to
    its end, are counted as text, one token per :data:`~.pricing.BYTES_PER_TOKEN` bytes rounded up (what
    :func:`~.pricing.text_tokens` counts for UTF-8 text), so a line that never ends is neither kept nor free.
    A usage reported after it still wins: the text count is only the fallback."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.usage: tuple[int, int] | None = None
        self.text_tokens = 0
        self.done = False
        self._line = bytearray()  # the unfinished line (a bytearray, not a list of parts: no overhead per part)
        self._overlong = 0  # bytes so far of a line past max_line_bytes (0: the line is being kept)
        self._after_cr = False  # the last chunk ended with CR: an LF first in the next one ends no line

    @property
    def held(self) -> int:
        """Bytes of the unfinished line kept (at most ``max_line_bytes``)."""
        return len(self._line)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        start = 1 if self._after_cr and chunk.startswith(b"\n") else 0
        self._after_cr = chunk.endswith(b"\r")
        for end in _LINE_END.finditer(chunk, start):
            self._take(chunk[start : end.start()])
            self._end_line()
            start = end.end()
        self._take(chunk[start:])

    def end(self) -> None:
        """The stream is over: its last line is read even if no line end followed it."""
        self._end_line()

    def _take(self, part: bytes) -> None:
        """Add ``part`` to the unfinished line, or count it if the line is past the limit."""
        if not part:
            return
        if not self._overlong and len(self._line) + len(part) <= self.max_line_bytes:
            self._line += part
            return
        counted = byte_tokens(self._overlong)
        self._overlong += len(self._line) + len(part)
        self.text_tokens += byte_tokens(self._overlong) - counted
        self._line.clear()

    def _end_line(self) -> None:
        if not self._overlong:
            self._read(bytes(self._line))
        self._line.clear()
        self._overlong = 0

    def _read(self, raw: bytes) -> None:
        line = raw.strip()
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        event = _object(data)
        if event is None:
            return
        found = usage_of(event)
        if found is not None:
            self.usage = found
        text = reply_text(event)
        if text:
            self.text_tokens += text_tokens(text)
