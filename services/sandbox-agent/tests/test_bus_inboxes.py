"""An agent's inbox is made sure of by senders and configured by the host serving the agent (real nats-server)."""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient
from symbi_common.bus_streams import inbox_metadata, inbox_name
from symbi_contracts.bus import MESSAGES_STREAM, direct_subject, topic_subject
from symbi_sandbox_agent.bus.inboxes import Inboxes


async def test_a_sender_making_sure_of_an_inbox_never_undoes_what_its_host_set(provisioned: NatsClient) -> None:
    """The sender finds no inbox, the serving host creates it with the agent's topic and metadata, then the
    sender creates it too: the host's inbox stays as it is (before, the sender's create-or-update replaced the
    filters and dropped the metadata, and topic messages were no longer kept for the agent)."""
    js = provisioned.jetstream()
    host, sender = Inboxes(js), Inboxes(js)
    declared = inbox_metadata(50, ("internal",))
    consumer_info = js.consumer_info

    async def host_first(stream: str, name: str, *args: Any, **kwargs: Any) -> Any:
        await host.ensure("ada", ["news"], declared)  # (between the sender's look and its create)
        raise nats.js.errors.NotFoundError

    class LateJs:  # the real JetStream context, but its look at the inbox comes before the host's create
        consumer_info = staticmethod(host_first)

        def __getattr__(self, name: str) -> Any:
            return getattr(js, name)

    sender.js = LateJs()
    await sender.ensure("ada")
    info = await consumer_info(MESSAGES_STREAM, inbox_name("ada"))
    assert set(info.config.filter_subjects or []) == {direct_subject("ada"), topic_subject("news")}
    assert {k: v for k, v in (info.config.metadata or {}).items() if not k.startswith("_nats.")} == declared
    # A sender to an agent nobody serves yet creates its inbox (direct messages wait in it).
    await Inboxes(js).ensure("bob")
    info = await consumer_info(MESSAGES_STREAM, inbox_name("bob"))
    assert info.config.filter_subjects == [direct_subject("bob")]
