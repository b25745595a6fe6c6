"""Reads of one subject that reach a sequence known to be stored there: read-after-write on a replicated stream.

Batched direct get (:func:`symbi_common.streams.read_subject`) is answered by any replica of the stream, and a
follower stores what the leader committed a moment later, so a read right after a write may be answered by a
replica that does not have it yet (a mirror with direct get answers too, and may lag for longer). nats-server
cannot be asked for "at least sequence N" on a direct get: a ``min_last_seq`` request field was tried before
2.12 and removed, and 2.15 ignores it and answers from whatever it has. So :func:`read_subject_at_least` checks
the answer itself: when the read ends, its last message must be at ``at_least`` or later. If it is not, the
replica is behind, and the rest is read from the stream leader (``STREAM.MSG.GET``, which only the leader
answers and which holds every acknowledged message), again a little later while a newly elected leader has not
stored it yet, and :class:`StaleRead` once ``timeout`` has passed: never a short history passed off as the
current one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from symbi_common.errors import InfrastructureError, StaleRead, Timeout
from symbi_common.streams import RawMessage, read_subject

#: JetStream error code of a message get that found nothing (at or after the sequence asked for).
NO_MESSAGE_FOUND = 10037


class KnownSequences:
    """For the ``kept`` subjects used last, the highest sequence of a message each is known to hold."""

    def __init__(self, kept: int = 10_000) -> None:
        self.kept = kept
        self._known: OrderedDict[str, int] = OrderedDict()

    def of(self, subject: str) -> int:
        """The highest sequence known on ``subject``; 0 if none (or forgotten)."""
        return self._known.get(subject, 0)

    def saw(self, subject: str, sequence: int) -> None:
        """``subject`` holds a message at ``sequence`` (an ack, a conflict's number, a read)."""
        known = self._known
        if known.get(subject, 0) < sequence:
            known[subject] = sequence
            known.move_to_end(subject)
            if len(known) > self.kept:
                known.popitem(last=False)


async def read_subject_at_least(
    nc: NatsClient,
    stream: str,
    subject: str,
    *,
    after: int = 0,
    at_least: int = 0,
    batch: int = 1000,
    timeout: float = 5.0,
) -> AsyncIterator[list[RawMessage]]:
    """Every message of ``subject`` with sequence > ``after``, in batches, up to one at ``at_least`` or later.

    ``at_least`` is the sequence of a message of ``subject`` the caller knows is stored (its own append's ack,
    the sequence a conflict named, an earlier read); 0 when it knows none. Raises :class:`StaleRead` if neither
    the replica that answered nor the leader has it within ``timeout``.
    """
    last = after
    async for found in read_subject(nc, stream, subject, after=after, batch=batch, timeout=timeout):
        last = found[-1].sequence
        yield found
    if last >= at_least:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.002
    while True:
        tail = await _from_leader(nc, stream, subject, after=last, limit=batch, timeout=timeout)
        if tail:
            last = tail[-1].sequence
            yield tail
            if len(tail) == batch:
                continue
        if last >= at_least:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StaleRead(
                f"no replica of {stream} returned {subject} up to sequence {at_least} within {timeout} s "
                f"(read up to {last})",
                stream=stream,
                subject=subject,
                at_least=at_least,
                read=last,
            )
        await asyncio.sleep(min(delay, remaining))  # the last look is at the deadline
        delay = min(delay * 2, 0.1)


async def ever_stored(nc: NatsClient, stream: str, subject: str, *, timeout: float = 5.0) -> bool:
    """Whether ``stream`` holds any message of ``subject``, as its leader (which holds every acknowledged message)
    answers: a model that has not seen one yet may still be behind, but nothing is on its way if this is False."""
    return await _leader_next(nc, stream, subject, 1, timeout) is not None


async def read_from_leader(
    nc: NatsClient, stream: str, subject: str, *, limit: int = 10_000, timeout: float = 5.0
) -> list[RawMessage]:
    """Up to ``limit`` messages of ``subject`` as the stream's leader holds them (every acknowledged one), one
    request each: for a short read that must not be answered by a replica that is behind."""
    return await _from_leader(nc, stream, subject, after=0, limit=limit, timeout=timeout)


async def _from_leader(
    nc: NatsClient, stream: str, subject: str, *, after: int, limit: int, timeout: float
) -> list[RawMessage]:
    """Up to ``limit`` messages of ``subject`` after sequence ``after``, from the stream leader, one per request."""
    out: list[RawMessage] = []
    while len(out) < limit:
        msg = await _leader_next(nc, stream, subject, (out[-1].sequence if out else after) + 1, timeout)
        if msg is None:
            break
        out.append(msg)
    return out


async def _leader_next(nc: NatsClient, stream: str, subject: str, start: int, timeout: float) -> RawMessage | None:
    """The first message of ``subject`` at or after ``start`` as the stream leader has it; None if none is."""
    request = json.dumps({"seq": start, "next_by_subj": subject}).encode()
    try:
        reply = await nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", request, timeout=timeout)
    except nats.errors.TimeoutError as exc:
        raise Timeout(f"the leader of {stream} did not answer a read of {subject}") from exc
    except nats.errors.NoRespondersError as exc:
        raise InfrastructureError(f"stream {stream} does not answer; is JetStream up and provisioned?") from exc
    try:
        body: dict[str, Any] = json.loads(reply.data)
        error: dict[str, Any] | None = body.get("error")
    except (ValueError, AttributeError) as exc:
        raise InfrastructureError(f"the leader of {stream} returned a malformed reply: {exc}") from exc
    if error is not None:
        if error.get("err_code") == NO_MESSAGE_FOUND:
            return None
        raise InfrastructureError(
            f"reading {subject} from the leader of {stream} failed: {error.get('description')} "
            f"(code {error.get('err_code')})"
        )
    try:
        stored: dict[str, Any] = body["message"]
        sequence = int(stored["seq"])
        headers = _headers(base64.b64decode(stored.get("hdrs") or ""))
        headers["Nats-Subject"] = str(stored["subject"])
        headers["Nats-Sequence"] = str(sequence)
        return RawMessage(
            subject=str(stored["subject"]),
            sequence=sequence,
            data=base64.b64decode(stored.get("data") or ""),
            headers=headers,
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise InfrastructureError(f"the leader of {stream} returned a malformed message: {exc}") from exc


def _headers(block: bytes) -> dict[str, str]:
    """The headers of a stored message (``NATS/1.0`` line, then ``Name: value`` lines)."""
    out: dict[str, str] = {}
    for line in block.decode().split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out
