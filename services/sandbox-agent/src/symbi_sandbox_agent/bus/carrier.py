"""The bus's carrier on JetStream: sealing and publishing messages, and each agent's inbox.

An agent's inbox is the durable pull consumer ``inbox-<agent>`` on ``MESSAGES``, filtered on its direct
subject and the topics it subscribed to; it exists from the first message sent to the agent (interest
retention keeps the message for it), so a message to an agent that is not running, or is suspended, waits.
Publishing names the message id (``Nats-Msg-Id``: a resend within the duplicate window is stored once). A
fetched batch is recorded in ``BUS_DELIVERED`` and acked only once the agent's answer holding it has been
written to its channel (:meth:`Carrier.commit`): a crash before that redelivers it (at least once), a
redelivery of a committed message is recognised by that record and not handed over again, and the agent's
SDK drops an id it already handled (the redelivery of a batch written but not committed). Order per
sender→recipient pair is the stream's order: one consumer per inbox, fetched in order, acked per batch.
The inbox consumers themselves are made and fetched from by :mod:`symbi_sandbox_agent.bus.inboxes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from symbi_common.bus_streams import ACK_WAIT_S
from symbi_common.datakeys import DataKeys
from symbi_common.errors import SymbiError
from symbi_contracts.bus import (
    DEADLETTER_STREAM,
    ENVELOPE_DECODER,
    INBOX_DEPTH,
    DeadLetter,
    Envelope,
    Kind,
    Meta,
    dead_subject,
    direct_subject,
    encode,
    reply_subject,
    topic_subject,
    valid_name,
)

from symbi_sandbox_agent.bus.addresses import check_address, replayed_at
from symbi_sandbox_agent.bus.codec import (
    UNDECODABLE,
    Encoded,
    Refused,
    check_ttl,
    expired,
    is_duration,
    open_payload,
    seal,
    sendable,
)
from symbi_sandbox_agent.bus.delivered import Batch, Delivered
from symbi_sandbox_agent.bus.errors import BadAddress, NoReply, RateLimited, RecipientTerminated, TooLarge, Undecided
from symbi_sandbox_agent.bus.identity import Identities
from symbi_sandbox_agent.bus.inboxes import Inboxes
from symbi_sandbox_agent.bus.limits import RateLimiter, SendLimits
from symbi_sandbox_agent.bus.recipients import Recipients
from symbi_sandbox_agent.bus.terminated import TerminatedAgents

#: Ids remembered in memory per inbox (the KV record covers the rest).
RECENT_IDS = 10_000
#: NATS error code: the subject holds its maximum of messages (discard new per subject).
_SUBJECT_FULL = 10077

#: After the server refused a message to a full inbox, how long sends to it are refused without asking.
FULL_BACKOFF_S = 0.005
#: Envelopes remembered as signed by this process (their digests), at most.
SEALED_HERE = 100_000

#: Delivery-time policy question: (sender, recipient, meta) → ``None`` if allowed, else why not.
Check = Callable[[str, str, Meta], Awaitable[str | None]]
#: How long a message whose delivery could not be decided waits in the inbox before it is delivered again.
UNDECIDED_RETRY_S = 10.0


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _message_id(data: bytes) -> str:
    try:
        return ENVELOPE_DECODER.decode(data).meta.id[:64]
    except UNDECODABLE:
        return "?"


class Carrier:
    def __init__(
        self,
        js: Any,
        nc: Any,
        datakeys: DataKeys,
        identities: Identities,
        delivered: Any,
        limiter: RateLimiter,
        ack_wait_s: float = ACK_WAIT_S,
    ):
        self.js, self.nc = js, nc
        self.datakeys = datakeys
        self.identities = identities
        self.delivered = delivered
        self.limiter = limiter
        #: ``ack_wait_s``: how long a batch handed over waits for its commit before its inbox delivers it again.
        self.inboxes = Inboxes(js, ack_wait_s)
        self._recent: dict[str, tuple[set[str], deque[str]]] = {}
        #: Agents known to be terminated (kept current by the bus runtime's follower).
        self.terminated = TerminatedAgents(identities.registry)
        #: Inboxes (or topics) the server refused as full, until when sends to them are refused here.
        self._full: dict[str, float] = {}
        #: Digests of envelopes this process sealed and signed: the same bytes coming back need no verification.
        self._sealed_here: OrderedDict[bytes, None] = OrderedDict()
        self.recipients = Recipients(js)

    # --- sending ---------------------------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        kind: Kind,
        body: Any,
        *,
        to: str = "",
        topic: str = "",
        ttl_s: float = 0.0,
        classification: str = "",
        in_reply_to: str = "",
        message_id: str = "",
        limits: SendLimits | None = None,
    ) -> Meta:
        """Seal and publish one message as ``sender`` under ``limits`` (default: the host's); ``RateLimited``
        when the sender or the inbox is full, ``TooLarge`` past the largest body."""
        target = to or topic
        check_address(to, topic)
        if kind == "reply" and not valid_name(in_reply_to):  # one token of the reply's subject
            raise BadAddress(f"{in_reply_to[:80]!r} is not a message id (1-64 letters, digits, '-' or '_')")
        if isinstance(body, Encoded):
            check_ttl(ttl_s)  # (the body was checked when it was encoded)
            payload = body.payload
        else:
            payload = sendable(body, ttl_s).payload
        lim = limits or self.limiter.limits
        if len(payload) > lim.max_message_bytes:
            raise TooLarge(
                f"the message body has {len(payload)} bytes; agent {sender} may send at most {lim.max_message_bytes}",
                max_message_bytes=lim.max_message_bytes,
            )
        now = time.monotonic()
        self.check_room(target, now)
        if to and kind != "reply":
            await self.recipients.check(to)
        wait = self.limiter.take(sender, len(payload), now, lim)
        if wait:
            raise RateLimited(f"agent {sender} is over its send rate; try again in {wait:.3f} s", retry_after=wait)
        meta = Meta(
            id=message_id or os.urandom(16).hex(),  # (uuid4 costs ten times as much)
            kind=kind,
            sender=sender,
            sent_at=time.time(),
            to=to,
            topic=topic,
            ttl_s=ttl_s,
            reply_to=reply_subject(sender, message_id) if kind == "request" else "",
            in_reply_to=in_reply_to,
            classification=classification,
            size=len(payload),
        )
        key = await self.datakeys.current(f"message.{sender}.{to or 'topic-' + topic}")
        envelope = seal(meta, payload, key, await self.identities.signer(sender))
        if kind == "reply":
            subject = reply_subject(to, in_reply_to)
        elif topic:
            subject = topic_subject(topic)
        else:
            subject = direct_subject(to)
            if to in self.terminated:
                await self.dead_letter(encode(envelope), to, "recipient_terminated", f"agent {to} is terminated")
                raise RecipientTerminated(
                    f"agent {to} is terminated: message {meta.id} went to the dead letters", message_id=meta.id
                )
            await self.ensure_inbox(to)
        data = encode(envelope)
        try:
            await self.publish(subject, data, meta.id)
        except RateLimited:
            self._full[to or topic] = time.monotonic() + FULL_BACKOFF_S
            raise
        self._sealed_here[_digest(data)] = None
        if len(self._sealed_here) > SEALED_HERE:
            self._sealed_here.popitem(last=False)
        return meta

    def check_room(self, target: str, now: float | None = None) -> None:
        """:class:`RateLimited` if ``target``'s inbox (or topic) was refused as full a moment ago: what the
        server would refuse is not decided, sealed, signed and sent again."""
        now = time.monotonic() if now is None else now
        full_until = self._full.get(target, 0.0)
        if full_until > now:
            raise RateLimited(f"{target}'s inbox is full; try again later", retry_after=full_until - now)

    async def publish(self, subject: str, data: bytes, message_id: str, headers: dict[str, str] | None = None) -> None:
        try:
            # (no expected-stream header: msg.> is MESSAGES' alone, and every header costs each receiver a parse)
            await self.js.publish(subject, data, headers={**(headers or {}), "Nats-Msg-Id": message_id})
        except nats.js.errors.APIError as exc:
            if exc.err_code == _SUBJECT_FULL:
                raise RateLimited(
                    f"{subject} already holds {INBOX_DEPTH} undelivered messages; try again later", retry_after=1.0
                ) from None
            raise

    async def request(self, sender: str, to: str, body: Any, timeout_s: float, **extra: Any) -> Delivered:
        """Send a request and wait for its reply (from ``to`` only)."""
        message_id = os.urandom(16).hex()
        sub = await self.nc.subscribe(reply_subject(sender, message_id))
        try:
            await self.send(sender, "request", body, to=to, message_id=message_id, **extra)
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                try:
                    got = await self.open(msg.data, sender)
                except Refused:
                    continue
                if got.meta.sender == to and got.meta.in_reply_to == message_id:
                    return got
        finally:
            await sub.unsubscribe()
        raise NoReply(f"no reply from {to} to request {message_id} within {timeout_s} s", retry_after=0.0)

    # --- receiving -------------------------------------------------------------------------------------

    async def ensure_inbox(
        self, agent_id: str, topics: Sequence[str] = (), declared: dict[str, str] | None = None
    ) -> None:
        """The agent's inbox exists (and listens to ``topics`` too; ``declared``: the metadata its definition
        declares, :func:`~symbi_common.bus_streams.inbox_metadata`, given by the host serving it)."""
        await self.inboxes.ensure(agent_id, topics, declared)

    async def fetch(self, agent_id: str, most: int, timeout_s: float) -> list[Any]:
        """Up to ``most`` messages of the agent's inbox, waiting up to ``timeout_s`` for the first."""
        return await self.inboxes.fetch(agent_id, most, timeout_s)

    async def open(self, data: bytes, recipient: str, replayed_at: float = 0.0) -> Delivered:
        """Verify and decrypt one stored message for ``recipient``; :class:`Refused` says why it may not be."""
        try:
            envelope = ENVELOPE_DECODER.decode(data)
        except UNDECODABLE as exc:
            raise Refused("refused", f"not a message envelope: {exc}") from None
        return await self.open_envelope(
            envelope, recipient, replayed_at, signed_here=_digest(data) in self._sealed_here
        )

    async def open_envelope(
        self, envelope: Envelope, recipient: str, replayed_at: float = 0.0, *, signed_here: bool = False
    ) -> Delivered:
        """``signed_here``: these exact bytes were signed by this process (a message between two agents of
        this host): verifying our own signature over identical bytes again would prove nothing new."""
        meta = envelope.meta
        if not is_duration(meta.ttl_s):  # a peer's sender may sign what ours refuses to send: it never expires
            raise Refused("refused", f"message {meta.id}: ttl_s {meta.ttl_s!r:.40} is not a duration")
        if expired(meta, time.time(), replayed_at):
            raise Refused("expired", f"message {meta.id} expired {meta.ttl_s} s after it was sent")
        if not signed_here:
            await self.identities.check_signed(envelope)
        try:
            key = await self.datakeys.by_id(envelope.key_id)
        except SymbiError as exc:
            raise Refused("undecryptable", exc.message) from None
        if not envelope.key_id.startswith(f"message.{meta.sender}."):
            raise Refused("refused", f"message {meta.id} is sealed under another sender's key {envelope.key_id}")
        if not meta.topic and meta.to != recipient:  # a direct message copied into another agent's inbox
            raise Refused("refused", f"message {meta.id} is addressed to {meta.to[:80]}, not {recipient}")
        return Delivered(meta, open_payload(envelope, key))

    async def take(self, agent_id: str, msgs: Sequence[Any], check: Check, refused: list[str] | None = None) -> Batch:
        """Open a fetched batch for ``agent_id``: refused ones go to the dead letters (``<id> <reason>`` added to
        ``refused``) and duplicates are dropped, both acked now; the rest are the batch to hand over, neither
        recorded nor acked until :meth:`commit` (after the agent has its answer) or :meth:`release`."""
        recent, _ = self._recent.setdefault(agent_id, (set(), deque()))
        out: list[Delivered] = []
        held: list[Any] = []
        done: list[Any] = []
        dead: list[Awaitable[None]] = []
        later: list[Any] = []
        loaded = False  # the agent's delivery records, read at most once a batch (for a redelivered message)
        for msg in msgs:
            try:
                replayed = replayed_at(msg.headers)
                got = await self.open(msg.data, agent_id, replayed)
                if got.meta.id not in recent and msg.metadata.num_delivered > 1 and not loaded:
                    await self._load_delivered(agent_id)
                    loaded = True
                if got.meta.id in recent:
                    done.append(msg)
                    continue
                if got.meta.topic or replayed:  # a direct message was decided when it was sent
                    why = await check(got.meta.sender, agent_id, got.meta)
                    if why is not None:
                        raise Refused("refused", why)
            except Undecided:  # handed back for later (JetStream counts it a delivery: MAX_DELIVER still bounds it)
                later.append(msg)
                continue
            except Refused as refusal:
                dead.append(self.dead_letter(msg.data, agent_id, refusal.reason, refusal.detail))
                if refused is not None:
                    refused.append(f"{_message_id(msg.data)} {refusal.reason}")
                done.append(msg)
                continue
            out.append(got)
            held.append(msg)
        for letter in dead:
            await letter
        for m in done:  # an ack is a plain publish (no reply awaited): in sequence, without a task each
            await m.ack()
        for m in later:
            await m.nak(delay=UNDECIDED_RETRY_S)
        return Batch(agent_id, out, held, undecided=len(later))

    async def commit(self, batch: Batch) -> None:
        """The agent has ``batch`` (its answer is written): record the ids as handed over (one KV record per
        batch, so a redelivery is recognised), then ack. A crash before this redelivers the batch."""
        if not batch.held:
            return
        recent, order = self._recent.setdefault(batch.agent_id, (set(), deque()))
        ids = [d.meta.id for d in batch.delivered]
        last = batch.held[-1].metadata.sequence.stream
        await self.delivered.put(f"{batch.agent_id}.{last}", msgspec.json.encode(ids))
        for i in ids:
            recent.add(i)
            order.append(i)
        while len(order) > RECENT_IDS:
            recent.discard(order.popleft())
        for m in batch.held:
            await m.ack()
        batch.held = []

    async def receive(self, agent_id: str, most: int, timeout_s: float, check: Check) -> list[Delivered]:
        """Fetch, open and commit at once: for a handler in this process (no channel between)."""
        batch = await self.take(agent_id, await self.fetch(agent_id, most, timeout_s), check)
        await self.commit(batch)
        return batch.delivered

    async def release(self, msgs: Sequence[Any]) -> None:
        """Hand fetched messages back to the inbox, untouched (they are delivered again, in order)."""
        await asyncio.gather(*(m.nak() for m in msgs))

    async def _load_delivered(self, agent_id: str) -> None:
        """Remember the ids the agent's batch records say were handed over (only the agent's own records are
        read), so that a redelivered message handed over before is recognised."""
        recent, order = self._recent[agent_id]
        watcher = await self.delivered.watch(f"{agent_id}.>", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the records there are now have all come
                    break
                for message_id in msgspec.json.decode(entry.value or b"[]", type=list[str]):
                    if message_id not in recent:
                        recent.add(message_id)
                        order.append(message_id)
        finally:
            await watcher.stop()
        while len(order) > RECENT_IDS:
            recent.discard(order.popleft())

    async def dead_letter(self, data: bytes, recipient: str, reason: str, detail: str) -> None:
        """Keep an undeliverable message, with why, in ``DEADLETTER``."""
        try:
            envelope = ENVELOPE_DECODER.decode(data)
        except UNDECODABLE:
            return  # not a message at all: nothing to keep or replay
        letter = DeadLetter(reason=reason, detail=detail, recipient=recipient, dead_at=time.time(), envelope=envelope)
        await self.js.publish(
            dead_subject(recipient),
            encode(letter),
            stream=DEADLETTER_STREAM,
            headers={"Nats-Msg-Id": f"dead-{envelope.meta.id}-{recipient}-{reason}", "Symbi-Reason": reason},
        )

    async def close(self) -> None:
        """Stop taking from the inboxes (on shutdown, before the connection drains; the messages wait there)."""
        await self.inboxes.close()
