"""The attach stream on the event loop: frames split from any reads, stdin written, a blocked write stopped."""

from __future__ import annotations

import asyncio
import socket

from symbi_sandbox_agent.stdio import AttachStream, FrameParser


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_frames_are_split_whatever_the_reads() -> None:
    wire = frame(1, b"out") + frame(2, b"") + frame(2, b"err" * 1000) + frame(1, b"x")
    for step in (1, 3, 7, 8, 9, len(wire)):
        parser = FrameParser()
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(wire), step):
            got += parser.feed(wire[i : i + step])
        assert got == [(1, b"out"), (2, b"err" * 1000), (1, b"x")], step
        assert parser.pending == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    parser = FrameParser()
    assert parser.feed(frame(1, b"hello")[:10]) == []
    assert parser.pending == 10
    assert parser.feed(frame(1, b"hello")[10:]) == [(1, b"hello")]


async def test_input_goes_in_and_output_comes_out_on_the_loop() -> None:
    ours, engine = socket.socketpair()
    released: list[bool] = []
    stream = AttachStream(ours, release=lambda: released.append(True))
    try:
        await stream.send_input(b"the input")
        engine.settimeout(5)
        got = b""
        while chunk := engine.recv(100):  # our side shut down its writing: the workload's EOF
            got += chunk
        assert got == b"the input"
        engine.sendall(frame(1, b"the result") + frame(2, b"a log line"))
        engine.close()
        frames = [f async for f in stream.frames()]
        assert frames == [(1, b"the result"), (2, b"a log line")]
    finally:
        await stream.aclose()
    assert released == [True]
    assert stream.raw.fileno() == -1


async def test_a_write_the_workload_never_reads_is_stopped_when_the_stream_closes() -> None:
    ours, engine = socket.socketpair()
    stream = AttachStream(ours)
    writer = asyncio.ensure_future(stream.send_input(b"x" * 50_000_000))  # far more than the socket buffers
    await asyncio.sleep(0.05)
    assert not writer.done()
    await stream.aclose()
    await asyncio.wait_for(writer, 5)  # returns, no error: the run had ended
    await stream.send(b"late reply")  # a reply after the end is dropped, not an error
    engine.close()
