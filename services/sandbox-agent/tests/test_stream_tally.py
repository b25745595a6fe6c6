"""The gateway's tally of a streamed answer reads it alike however the provider's bytes are cut into chunks, holds
at most :data:`MAX_LINE_BYTES` of an unfinished line, and counts a line past that as text (fails closed: the
budget is charged for it, never less). Pure."""

from __future__ import annotations

import itertools
import tracemalloc

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symbi_sandbox_agent.models.pricing import BYTES_PER_TOKEN, text_tokens
from symbi_sandbox_agent.models.wire import MAX_LINE_BYTES, StreamTally, reply_text

NEWLINES = [b"\n", b"\r\n", b"\r"]
KIB = 1024


def _delta(text: str) -> bytes:
    return msgspec.json.encode({"choices": [{"delta": {"content": text}}]})


def _usage(prompt: int, completion: int) -> bytes:
    return msgspec.json.encode({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})


TEXTS = ["abcdef", "héllo wörld ✓", "x" * 40]
EXPECTED_TEXT = sum(text_tokens(t) for t in TEXTS)


def _stream(newline: bytes, *, usage: bool = True, extra: list[bytes] | None = None) -> bytes:
    """An SSE stream as a provider sends it: comments, event names, text deltas, the usage, ``[DONE]``."""
    lines = [b": keep-alive", b"event: message"]
    for text in TEXTS:
        lines += [b"data: " + _delta(text), b""]
    lines += extra or []
    if usage:
        lines += [b"data:" + _usage(7, 3), b""]
    lines += [b"data: [DONE]", b""]
    return b"".join(line + newline for line in lines)


def _tally(chunks: list[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> tuple[object, ...]:
    tally = StreamTally(max_line_bytes)
    for chunk in chunks:
        tally.feed(chunk)
    return tally.usage, tally.text_tokens, tally.done


class _Lines(StreamTally):
    """Records the lines the tally reads (to see where it ends them)."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__(max_line_bytes)
        self.lines: list[bytes] = []

    def _read(self, raw: bytes) -> None:
        self.lines.append(raw)
        super()._read(raw)


def _lines(chunks: list[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> list[bytes]:
    tally = _Lines(max_line_bytes)
    for chunk in chunks:
        tally.feed(chunk)
    return tally.lines


@pytest.mark.parametrize("newline", NEWLINES, ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("usage", [True, False], ids=["usage", "no-usage"])
def test_a_stream_cut_anywhere_is_tallied_as_when_whole(newline: bytes, usage: bool) -> None:
    data = _stream(newline, usage=usage)
    whole = _tally([data])
    assert whole == ((7, 3) if usage else None, EXPECTED_TEXT, True)
    for cut in range(len(data) + 1):  # every CR LF is cut between its CR and its LF once
        assert _tally([data[:cut], data[cut:]]) == whole, cut
    assert _tally([data[i : i + 1] for i in range(len(data))]) == whole


@pytest.mark.parametrize("newline", NEWLINES, ids=["LF", "CRLF", "CR"])
def test_each_line_end_ends_one_line_even_across_chunks(newline: bytes) -> None:
    data = _stream(newline)
    expected = data.split(newline)[:-1]
    assert _lines([data]) == expected
    for cut in range(len(data) + 1):
        assert _lines([data[:cut], data[cut:]]) == expected, cut
    assert _lines([b"data: a\r", b"\n", b"\ndata: b\r", b"", b"\n"]) == [b"data: a", b"", b"data: b"]
    assert _lines([b"a\r", b"\r", b"\n", b"\r"]) == [b"a", b"", b""]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=30).map(lambda t: b"data: " + _delta(t)),
            st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(lambda u: b"data: " + _usage(*u)),
            st.just(b"data: [DONE]"),
            st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        ),
        max_size=8,
    ),
    newline=st.sampled_from(NEWLINES),
    max_line_bytes=st.sampled_from([16, 64, MAX_LINE_BYTES]),
    cuts=st.lists(st.integers(0, 1000), max_size=12),
)
def test_random_cuts_give_the_tally_of_the_whole_stream(
    lines: list[bytes], newline: bytes, max_line_bytes: int, cuts: list[int]
) -> None:
    data = b"".join(line + newline for line in lines)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    whole = _tally([data], max_line_bytes)
    assert _tally(chunks, max_line_bytes) == whole
    assert _lines(chunks, max_line_bytes) == [line for line in lines if len(line) <= max_line_bytes]
    # a line past the limit is charged by its bytes, read or not
    overlong = sum(-(-len(line) // BYTES_PER_TOKEN) for line in lines if len(line) > max_line_bytes)
    assert whole[1] >= overlong


def test_a_line_at_the_limit_is_read_and_one_past_it_is_charged_by_its_bytes() -> None:
    event = b"data: " + _delta("hi") + b"    "  # trailing blanks pad the line; they are stripped when read
    at = StreamTally(len(event))
    at.feed(event + b"\n")
    assert at.text_tokens == text_tokens("hi")
    past = StreamTally(len(event) - 1)
    past.feed(event + b"\n")
    assert past.text_tokens == -(-len(event) // BYTES_PER_TOKEN)
    assert past.held == 0


def test_an_endless_line_is_held_up_to_the_limit_and_charged_all_its_bytes() -> None:
    tally = StreamTally()
    piece = "é" * 500 + "x"  # 1001 bytes: each é is cut between chunks somewhere
    chunk = ("data: " + piece).encode()
    line = bytearray()
    held = 0
    for i in range(3 * MAX_LINE_BYTES // len(chunk)):
        part = chunk if i == 0 else piece.encode()
        tally.feed(part)
        line += part
        held = max(held, tally.held)
        assert tally.held <= MAX_LINE_BYTES
    assert held > MAX_LINE_BYTES - len(chunk)  # it was kept until it was too long, not dropped early
    charged = tally.text_tokens
    assert charged == text_tokens(line.decode()) == text_tokens(bytes(line).decode("utf-8", "replace"))
    assert charged * BYTES_PER_TOKEN >= len(line)
    assert tally.usage is None  # the gateway reconciles with the text counted
    tally.feed(b"\r")
    tally.feed(b"\ndata: " + _delta("after") + b"\n\n")
    assert tally.text_tokens == charged + text_tokens("after")  # lines after it are read again
    tally.feed(b"data: " + _usage(5, 1) + b"\n\ndata: [DONE]\n\n")
    assert (tally.usage, tally.done) == ((5, 1), True)  # a reported usage still wins


def test_a_4_mib_line_in_1_kib_chunks_is_read_in_bounded_memory() -> None:
    """Linear: each chunk is scanned once and at most the limit is held, so memory does not follow the line."""
    chunk = b"y" * KIB
    tally = StreamTally()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        tally.feed(b"data: ")
        for _ in range(4 * KIB):
            tally.feed(chunk)
            assert tally.held <= MAX_LINE_BYTES
        tally.feed(b"\ndata: " + _delta("z") + b"\ndata: [DONE]\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_LINE_BYTES  # the whole line is 4 MiB
    assert tally.held == 0
    assert tally.done
    assert tally.text_tokens == -(-(6 + 4 * KIB * KIB) // BYTES_PER_TOKEN) + text_tokens("z")


def test_the_last_line_is_read_when_the_stream_ends_without_a_line_end() -> None:
    """A provider that ends with its usage and no newline: read at the end (the relay calls ``end``), not lost."""
    tally = StreamTally()
    tally.feed(b"data: " + _delta("abcdef") + b"\n\ndata: " + _usage(7, 3))
    assert tally.usage is None
    tally.end()
    assert tally.usage == (7, 3)
    assert tally.text_tokens == text_tokens("abcdef")
    tally.end()  # nothing left: a second end reads nothing again
    assert tally.text_tokens == text_tokens("abcdef")


def test_tool_calls_refusals_and_reasoning_are_counted_when_no_usage_is_reported() -> None:
    """A reply of tool calls alone was counted as 0 completion tokens (only ``content`` was read)."""
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}
    reply = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
    assert reply_text(reply) == 'lookup{"city": "Paris"}'
    legacy = {"choices": [{"message": {"function_call": {"name": "f", "arguments": "{}"}, "refusal": "no"}}]}
    assert reply_text(legacy) == "nof{}"
    # Streamed: the arguments come in pieces, each counted as it passes.
    tally = StreamTally()
    for piece in ('{"ci', 'ty": "Paris"}'):
        delta = {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}}]}
        tally.feed(b"data: " + msgspec.json.encode(delta) + b"\n\n")
    tally.feed(b"data: " + msgspec.json.encode({"choices": [{"delta": {"reasoning_content": "hmm"}}]}) + b"\n\n")
    assert tally.text_tokens == text_tokens('{"ci') + text_tokens('ty": "Paris"}') + text_tokens("hmm")
    # Malformed shapes count nothing and raise nothing.
    for odd in ({"choices": [{"message": {"tool_calls": "x", "function_call": 5}}]}, {"choices": [1, None]}):
        assert reply_text(odd) == ""  # type: ignore[arg-type]
