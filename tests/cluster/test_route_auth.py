"""Cluster routes need the cluster's route password: a server that reaches the route ports cannot join.

A server joined as a route receives every message of every account, whatever the users' permissions say.
So a nats-server started next to the cluster with the members' route URLs — without the route password, or
with a wrong one — must not join: its (anonymous, unrestricted) client sees neither a message published
through the cluster nor the ``EVENTS`` stream. The same server with the cluster's route password does join and
sees both, which shows the check above can fail. The same holds for deploy/k8s/nats.yaml's configuration,
run on loopback by three servers with the environment Kubernetes builds for each pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
import uuid
from pathlib import Path

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
import yaml  # type: ignore[import-untyped]
from nats.aio.client import Client as NatsClient
from symbi_cli.deploy_dir import ROUTE_PASSWORD_ENV, password_env_name
from symbi_cli.errors import InfraError
from symbi_cli.nats_cluster import free_ports
from symbi_cli.nats_server import ClusterRoutes, NatsServer
from symbi_common.natsauth import nats_users
from symbi_common.streams import EVENTS_STREAM

from .conftest import Cluster

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
#: How long a refused server is given to join (a member with the password joins within a second or two).
JOIN_WAIT = 5.0


def intruder(name: str, routes: tuple[str, ...], directory: Path, password: str | None) -> NatsServer:
    """A nats-server (JetStream on, no client authorization) pointed at the route URLs of cluster ``name``,
    presenting ``password`` as the route password, or no route credentials at all with ``None``."""
    (port,) = free_ports(1)
    cluster, config = None, ""
    if password is not None:
        cluster = ClusterRoutes(name, port, routes, password)
    else:
        config = f"cluster {json.dumps({'name': name, 'listen': f'127.0.0.1:{port}', 'routes': list(routes)})}"
    return NatsServer(
        directory / "store",
        log_file=directory / "nats.log",
        server_name=f"intruder-{directory.parent.name}-{directory.name}",
        cluster=cluster,
        config=config,
        monitoring=True,
    )


def member_routes(cluster: Cluster) -> tuple[str, tuple[str, ...]]:
    """The cluster's name and its members' route URLs (without credentials)."""
    member = cluster.servers.members[0].cluster
    assert member is not None
    return member.name, member.routes


async def route_names(server: NatsServer) -> set[str]:
    """The server names ``server`` has a route with."""
    async with httpx.AsyncClient(timeout=5) as http:
        routez = (await http.get(server.monitoring_url + "/routez")).json()
    return {str(route.get("remote_name")) for route in routez["routes"] or []}


async def joined(members: list[NatsServer], name: str, timeout: float) -> bool:
    """Whether a member routes with server ``name`` within ``timeout`` seconds. Asked of the members: a
    member adds a route only once it has accepted the route's credentials (the joining side lists a route
    it solicited for a moment, until the member refuses it)."""
    deadline = time.monotonic() + timeout
    while True:
        for member in members:
            if name in await route_names(member):
                return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.2)


async def sees_cluster_traffic(cluster: Cluster, server: NatsServer, wait: float) -> tuple[bool, bool]:
    """Whether a client of ``server`` receives an event published through the cluster, and whether it reads
    that event back from the ``EVENTS`` stream, each within ``wait`` seconds (a server that joined sees both
    within a second or two; one that did not join never does, so a short wait suffices to show it)."""
    spy: NatsClient = await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
    publisher = await cluster.connect("lifecycle", allow_reconnect=False)
    try:
        sub = await spy.subscribe("evt.>")
        await spy.flush()
        await asyncio.sleep(0.5)  # interest propagates over routes
        payload = uuid.uuid4().bytes
        ack = await publisher.jetstream(timeout=10).publish(f"evt.agent.{uuid.uuid4()}", payload)
        try:
            live = (await sub.next_msg(timeout=wait)).data == payload
        except nats.errors.TimeoutError:
            live = False
        return live, await reads_stored(spy, ack.seq, payload, wait)
    finally:
        await publisher.close()
        await spy.close()


async def reads_stored(client: NatsClient, seq: int, payload: bytes, timeout: float) -> bool:
    """Whether ``client`` gets message ``seq`` of ``EVENTS`` (with ``payload``) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return (await client.jetstream(timeout=3).get_msg(EVENTS_STREAM, seq)).data == payload
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await asyncio.sleep(0.5)
    return False


@pytest.mark.parametrize("password", [None, "wrong-password"], ids=["no-credentials", "wrong-password"])
async def test_a_server_without_the_route_password_does_not_join(
    nats_cluster: Cluster, tmp_path: Path, password: str | None
) -> None:
    members = nats_cluster.servers.members
    with intruder(*member_routes(nats_cluster), tmp_path / "refused", password) as refused:
        assert not await joined(members, f"intruder-{tmp_path.name}-refused", JOIN_WAIT)
        assert await sees_cluster_traffic(nats_cluster, refused, wait=2.0) == (False, False)

    # The same server with the cluster's route password joins and sees everything: the check above can fail.
    password = nats_cluster.servers.route_password
    with intruder(*member_routes(nats_cluster), tmp_path / "joined", password) as accepted:
        assert await joined(members, f"intruder-{tmp_path.name}-joined", 30)
        assert await sees_cluster_traffic(nats_cluster, accepted, wait=10.0) == (True, True)


def on_loopback(text: str, route_ports: list[int]) -> str:
    """``text`` with each member's route address (its pod's DNS name) replaced by its route port on loopback."""
    for i, port in enumerate(route_ports):
        text = text.replace(f"symbi-nats-{i}.symbi-nats:6222", f"127.0.0.1:{port}")
    return text


def start_k8s_member(
    directory: Path, index: int, route_ports: list[int], monkeypatch: pytest.MonkeyPatch
) -> NatsServer:
    """Start member ``index`` of deploy/k8s/nats.yaml's StatefulSet on loopback: its nats.conf with the client,
    monitoring and route ports and the store moved to this host, its environment as Kubernetes builds it from
    the container's ``env`` (``$(VAR)`` expanded) with each member's route host moved to loopback."""
    docs = [d for d in yaml.safe_load_all((K8S / "nats.yaml").read_text()) if d]
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["nats.conf"]
    (container,) = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"]
    moved = {"port: 4222\n": "", "http_port: 8222\n": "", "store_dir: /data\n": ""}
    moved["port: 6222\n"] = f"listen: 127.0.0.1:{route_ports[index]}\n"
    for line, replacement in moved.items():
        assert line in conf, line
        conf = conf.replace(line, replacement)
    conf = on_loopback(conf, route_ports)
    directory.mkdir(parents=True)
    (directory / "nats.conf").write_text(conf)
    shutil.copy(REPO / "deploy" / "nats" / "users.conf", directory / "users.conf")
    env = {"POD_NAME": f"symbi-nats-{index}"}
    for var in container["env"]:
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: os.environ.get(m[1], m[0]), var["value"])
            env[var["name"]] = on_loopback(value, route_ports)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = NatsServer(
        directory / "store",
        log_file=directory / "nats.log",
        extra_args=["-c", str(directory / "nats.conf")],
        monitoring=True,
    )
    return server.start()  # the server reads its environment now


def test_the_kubernetes_nats_members_route_only_with_the_route_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/k8s/nats.yaml's configuration, run by three real nats-servers: the members join each other with
    the route password from their environment, and a server with their route URLs but without it is refused."""
    for user in nats_users():
        monkeypatch.setenv(password_env_name(user), "p" + secrets.token_urlsafe(16))
    route_password = "p" + secrets.token_urlsafe(24)
    monkeypatch.setenv(ROUTE_PASSWORD_ENV, route_password)
    route_ports = free_ports(3)
    routes = tuple(f"nats-route://127.0.0.1:{port}" for port in route_ports)
    members: list[NatsServer] = []
    try:
        for i in range(3):
            members.append(start_k8s_member(tmp_path / f"symbi-nats-{i}", i, route_ports, monkeypatch))
        for i in range(3):  # the members join each other with the password from their environment
            assert asyncio.run(joined(members, f"symbi-nats-{i}", 30)), f"symbi-nats-{i} did not join"
        with intruder("symbi", routes, tmp_path / "refused", None):
            assert not asyncio.run(joined(members, f"intruder-{tmp_path.name}-refused", JOIN_WAIT))
        with intruder("symbi", routes, tmp_path / "joined", route_password):
            assert asyncio.run(joined(members, f"intruder-{tmp_path.name}-joined", 30))
    finally:
        for member in members:
            member.stop()


def test_a_cluster_member_refuses_to_start_without_a_route_password() -> None:
    with pytest.raises(InfraError, match="route password is required"):
        ClusterRoutes("symbi", 6222, ("nats-route://127.0.0.1:6222",), "")
