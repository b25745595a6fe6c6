"""Each agent's inbox on JetStream: the durable pull consumer ``inbox-<agent>`` on ``MESSAGES``, filtered on the
agent's direct subject and the topics it subscribed to, with the metadata its host declared on it; and the pull
subscription the agent's messages are fetched through."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig
from symbi_common.bus_streams import ACK_WAIT_S, inbox_config, inbox_name
from symbi_contracts.bus import MESSAGES_STREAM, direct_subject, topic_subject, valid_name

from symbi_sandbox_agent.bus.errors import BadAddress, BusClosed

#: JetStream's "consumer already exists" (a create-only request for one configured otherwise).
CONSUMER_EXISTS = 10148


class Inboxes:
    """The inboxes this process has made sure of, and its pull subscriptions to them; ``ack_wait_s``: how long
    a message handed over waits for its ack before the inbox delivers it again, set on each inbox this process
    creates or declares (``[sandbox] bus_ack_wait_s``)."""

    def __init__(self, js: Any, ack_wait_s: float = ACK_WAIT_S) -> None:
        self.js = js
        self.ack_wait_s = ack_wait_s
        self._closed = False
        self._inboxes: set[str] = set()
        self._subs: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: What this host declared on the inbox of each agent it serves (from its definition).
        self._declared: dict[str, dict[str, str]] = {}

    async def ensure(self, agent_id: str, topics: Sequence[str] = (), declared: dict[str, str] | None = None) -> None:
        """The agent's inbox exists (and listens to ``topics`` too; ``declared``: the metadata its definition
        declares, :func:`~symbi_common.bus_streams.inbox_metadata`, given by the host serving it)."""
        declare = declared is not None and self._declared.get(agent_id) != declared
        if agent_id in self._inboxes and not topics and not declare:
            return
        for topic in topics:
            if not valid_name(topic):
                raise BadAddress(f"{topic[:80]!r} is not a topic (1-64 letters, digits, '-' or '_')")
        name = inbox_name(agent_id)
        async with self._locks.setdefault(agent_id, asyncio.Lock()):
            filters = [direct_subject(agent_id)]
            kept: dict[str, str] | None = None
            try:
                info = await self.js.consumer_info(MESSAGES_STREAM, name)
                filters = list(info.config.filter_subjects or [info.config.filter_subject or filters[0]])
                # (the server adds its own ``_nats.*`` entries: only what a host declared counts)
                kept = {k: v for k, v in (info.config.metadata or {}).items() if not k.startswith("_nats.")} or None
                if declared is not None and kept == declared:
                    declare = False
                    self._declared[agent_id] = declared
                if not declare and all(topic_subject(t) in filters for t in topics):
                    self._inboxes.add(agent_id)
                    return
            except nats.js.errors.NotFoundError:
                if not topics and declared is None:  # a sender: it makes sure the inbox exists, never changes it
                    await self._create_only(self._config(agent_id, filters))
                    self._inboxes.add(agent_id)
                    return
            wanted = [*filters, *(topic_subject(t) for t in topics if topic_subject(t) not in filters)]
            await self.js.add_consumer(
                MESSAGES_STREAM, self._config(agent_id, wanted, declared if declared is not None else kept)
            )
            self._inboxes.add(agent_id)
            if declared is not None:
                self._declared[agent_id] = declared

    def _config(self, agent_id: str, filters: list[str], metadata: dict[str, str] | None = None) -> ConsumerConfig:
        """The inbox's consumer configuration, with this process's ack wait."""
        return inbox_config(agent_id, filters, metadata, ack_wait=self.ack_wait_s)

    async def _create_only(self, config: Any) -> None:
        """Create the inbox consumer unless it exists, whatever it is configured with: the host serving its agent
        may have just made it with the agent's topics and metadata, which a create-or-update would drop. (The
        JetStream API's ``action: create``; nats-py's ``add_consumer`` does not send it.)"""
        request = {"stream_name": MESSAGES_STREAM, "config": config.as_dict(), "action": "create"}
        subject = f"{self.js._prefix}.CONSUMER.CREATE.{MESSAGES_STREAM}.{config.durable_name}"
        reply = await self.js._nc.request(subject, json.dumps(request).encode(), timeout=self.js._timeout)
        error = json.loads(reply.data).get("error")
        if error is not None and error.get("err_code") != CONSUMER_EXISTS:
            raise nats.js.errors.APIError.from_error(error)

    async def fetch(self, agent_id: str, most: int, timeout_s: float) -> list[Any]:
        """Up to ``most`` messages of the agent's inbox, waiting up to ``timeout_s`` for the first;
        :class:`BusClosed` once :meth:`close` has run (the service is stopping)."""
        if self._closed:
            raise self._closed_error(agent_id)
        await self.ensure(agent_id)
        sub = self._subs.get(agent_id)
        if sub is None:
            sub = await self.js.pull_subscribe_bind(inbox_name(agent_id), MESSAGES_STREAM)
            if self._closed:  # closed while subscribing: not kept past the close
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                raise self._closed_error(agent_id)
            self._subs[agent_id] = sub
        try:
            return list(await sub.fetch(most, timeout=max(timeout_s, 0.05)))
        except (nats.errors.TimeoutError, TimeoutError):
            return []

    @staticmethod
    def _closed_error(agent_id: str) -> BusClosed:
        return BusClosed(f"the bus of this host is closed (the service is stopping): {agent_id}'s inbox waits")

    async def close(self) -> None:
        """Unsubscribe from every inbox (the consumers stay: the messages wait for the agents); nothing is
        fetched afterwards. Done before the connection drains: a pull subscription's queue may hold a late
        status answer of an expired fetch that nats-py takes without marking it done, and draining such a
        subscription would wait the whole drain timeout (30 s) for it."""
        self._closed = True
        for sub in self._subs.values():
            with contextlib.suppress(Exception):  # the connection may be closed already
                await sub.unsubscribe()
        self._subs.clear()
