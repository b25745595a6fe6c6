"""The bus of one sandbox-agent process: its carrier, opened once on the service's connection and keys (and
closed when the service stops), and the listener that turns JetStream's max-deliveries advisories into dead
letters."""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from symbi_common.bus_streams import inbox_name
from symbi_common.consuming import keep_consuming
from symbi_common.service import ServiceRuntime
from symbi_contracts.bus import AGENT_KEYS_BUCKET, DELIVERED_BUCKET, MESSAGES_STREAM

from symbi_sandbox_agent.bus.carrier import Carrier
from symbi_sandbox_agent.bus.identity import Identities
from symbi_sandbox_agent.bus.limits import RateLimiter, SendLimits

log = structlog.get_logger(__name__)
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{MESSAGES_STREAM}.*"

_buses: weakref.WeakKeyDictionary[ServiceRuntime, Carrier] = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[ServiceRuntime, asyncio.Lock] = weakref.WeakKeyDictionary()


async def open_carrier(rt: ServiceRuntime, limits: SendLimits | None = None) -> Carrier:
    """A carrier on ``rt``'s connection, data keys and host key (the bus's KV buckets must be provisioned)."""
    agent_keys = await rt.js.key_value(AGENT_KEYS_BUCKET)
    delivered = await rt.js.key_value(DELIVERED_BUCKET)
    identities = Identities(agent_keys, rt.store.signer, rt.registry)
    rt.on_signer_change(lambda signer: setattr(identities, "host", signer))
    limiter = RateLimiter(limits or limits_of(rt))
    return Carrier(rt.js, rt.nc, rt.datakeys, identities, delivered, limiter, rt.settings.sandbox.bus_ack_wait_s)


def limits_of(rt: ServiceRuntime) -> SendLimits:
    s = rt.settings.sandbox
    return SendLimits(messages_per_s=s.bus_messages_per_s, bytes_per_s=s.bus_bytes_per_s)


async def bus_of(rt: ServiceRuntime) -> Carrier:
    """The process's carrier, opened on first use (with its advisory listener)."""
    carrier = _buses.get(rt)
    if carrier is not None:
        return carrier
    async with _opening.setdefault(rt, asyncio.Lock()):
        carrier = _buses.get(rt)
        if carrier is None:
            carrier = await open_carrier(rt)
            sub = await rt.nc.subscribe(MAX_DELIVERIES_ADVISORY)
            rt.spawn(follow_max_deliveries(carrier, sub), "bus:max-deliveries")
            # (started again after a failure, from the stream's start: applying an agent event twice changes nothing)
            follow = keep_consuming(lambda: carrier.terminated.follow(rt.js), rt.stopping, what="terminated agents")
            rt.spawn(follow, "bus:terminated-agents")
            # its inboxes' pull subscriptions are given up before the drain, which would wait on them
            rt.close_on_stop(carrier.close, before_drain=True)
            _buses[rt] = carrier
    return carrier


#: Seconds between the tries of a dead letter NATS failed to take (then the advisory is given up, logged).
DEAD_LETTER_RETRIES_S = (0.2, 1.0, 3.0)


async def follow_max_deliveries(
    carrier: Carrier, sub: Any, retries_s: tuple[float, ...] = DEAD_LETTER_RETRIES_S
) -> None:
    """A message an inbox delivered ``MAX_DELIVER`` times without an ack goes to the dead letters."""
    try:
        async for msg in sub.messages:
            try:
                advisory = json.loads(msg.data)
                if not isinstance(advisory, dict):
                    raise ValueError(f"{msg.data[:40]!r} is no advisory")
                consumer, seq = advisory.get("consumer"), advisory.get("stream_seq")
                if not isinstance(consumer, str) or not consumer.startswith("inbox-"):
                    continue
                recipient = consumer.removeprefix(inbox_name(""))
                if not recipient or type(seq) is not int or not 0 < seq < 2**64:
                    raise ValueError(f"{consumer[:80]!r} and {seq!r:.40} name no inbox and stored message")
                detail = f"delivered {advisory.get('deliveries', '?')} times to {consumer} without an acknowledgement"
                await _dead_letter(carrier, seq, recipient, detail, retries_s)
            except (nats.js.errors.NotFoundError, ValueError, RecursionError) as exc:  # (JSON from the wire: any depth)
                log.warning("a max-deliveries advisory could not be dead-lettered", error=repr(exc))
            except (nats.errors.Error, TimeoutError) as exc:  # (a timeout, a refused publish, each try of it)
                # The message stays in MESSAGES until its max age; the follower goes on with the next advisory.
                # (Cancellation is no Exception: it still ends the follower.)
                log.error("a max-deliveries advisory could not be dead-lettered: NATS failed", error=repr(exc))
    finally:
        await sub.unsubscribe()


async def _dead_letter(carrier: Carrier, seq: int, recipient: str, detail: str, retries_s: tuple[float, ...]) -> None:
    """Dead-letter stored message ``seq``, tried again after each of ``retries_s`` while NATS fails (the advisory
    comes once: a failure not retried loses the letter; the letter's message id makes a repeat harmless)."""
    for wait in (*retries_s, None):
        try:
            stored = await carrier.js.get_msg(MESSAGES_STREAM, seq)
            # The message itself stays in MESSAGES until its max age (a service may delete no message).
            await carrier.dead_letter(stored.data or b"", recipient, "max_deliveries", detail)
            return
        except nats.js.errors.NotFoundError:
            raise
        except (nats.errors.Error, TimeoutError) as exc:
            if wait is None:
                raise
            log.warning("dead letter not taken: trying again", seq=seq, error=repr(exc), in_s=wait)
            await asyncio.sleep(wait)
