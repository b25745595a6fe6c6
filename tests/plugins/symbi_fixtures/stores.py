"""Event stores signing as any service, and the operators' policy set for tests that call the APIs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys
from symbi_common.eventstore import EventStore
from symbi_common.keyring import KeyRegistry

MakeStore = Callable[..., Awaitable[EventStore]]
RegisterOperatorPolicies = Callable[[], Awaitable[None]]


@pytest.fixture
def register_operator_policies(make_store: MakeStore) -> RegisterOperatorPolicies:
    """``await register_operator_policies()``: policy set ``operators`` (the baseline's rules for the three
    operator roles), for tests that enforce policy without the baseline but call the APIs."""

    async def register() -> None:
        from symbi_common.operator_auth import OPERATOR_POLICIES
        from symbi_common.policy.events import AGGREGATE_TYPE, POLICY_SET_CODEC, PolicySetRegistered
        from symbi_common.sealing import NEW_AGGREGATE

        store = await make_store("policy")
        event = PolicySetRegistered(set_id="operators", cedar=OPERATOR_POLICIES)
        await store.append(AGGREGATE_TYPE, "operators", [event], POLICY_SET_CODEC, expected=NEW_AGGREGATE)

    return register


@pytest.fixture
def make_store(
    provisioned: NatsClient,
    signer_for: Callable[[str], Signer],
    registry: KeyRegistry,
    datakeys_for: Callable[[NatsClient, str], Awaitable[DataKeys]],
) -> MakeStore:
    """``await make_store("lifecycle")``: an :class:`EventStore` signing as that service.

    Every call has its own :class:`DataKeys` (own cache) over the shared ``DATAKEYS`` KV bucket,
    like a separate process would. ``nc=`` uses another connection, ``store_class=`` a subclass,
    other keyword arguments go to the store.
    """

    async def make(
        service: str = "lifecycle",
        *,
        nc: NatsClient | None = None,
        store_class: type[EventStore] = EventStore,
        **options: Any,
    ) -> EventStore:
        client = nc if nc is not None else provisioned
        return store_class(
            client,
            signer=signer_for(service),
            producer=service,
            registry=registry,
            datakeys=await datakeys_for(client, service),
            **options,
        )

    return make
