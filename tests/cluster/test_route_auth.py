"""Cluster routes need the cluster's route password: a server that reaches the route ports cannot join.

A server joined as a route receives every message of every account, whatever the users' permissions say.
So a nats-server started next to the cluster with the members' route URLs — without the route password, or
with a wrong one — must not join: its (anonymous, unrestricted) client sees neither a message published
through the cluster nor the ``EVENTS`` stream. The same server with the cluster's route password does join and
sees both, which shows the check above can fail. The same holds for deploy/k8s/nats.yaml's configuration,
run on loopback by three servers with the environment Kubernetes builds for each pod and the TLS material
``symbi deploy init`` writes: there a client or a route must also present a certificate of the deployment's
CA (mutual TLS), and a route then still needs the route password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
import yaml  # type: ignore[import-untyped]
from nats.aio.client import Client as NatsClient
from symbi_cli.deploy_dir import ROUTE_PASSWORD_ENV, password_env_name
from symbi_cli.deploy_tls import NATS_PARTY, SERVER_NAMES, PartyFiles, ensure_tls, issue, new_ca, party_files
from symbi_cli.errors import InfraError
from symbi_cli.nats_server import ClusterRoutes, NatsServer
from symbi_common.nats_client import client_tls, server_options, with_credentials
from symbi_common.natsauth import nats_users
from symbi_common.streams import EVENTS_STREAM
from symbi_fixtures.pem_files import write_pem_pair
from symbi_fixtures.runtimes import take_free_ports

from .conftest import Cluster

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
#: How long a refused server is given to join (a member with the password joins within a second or two).
JOIN_WAIT = 5.0


def intruder(
    name: str, routes: tuple[str, ...], directory: Path, password: str | None, tls: PartyFiles | None = None
) -> NatsServer:
    """A nats-server (JetStream on, no client authorization, a plain client port) pointed at the route URLs of
    cluster ``name``, presenting ``password`` as the route password, or no route credentials at all with
    ``None``; with ``tls``, its routes speak TLS with that certificate and key, trusting that CA."""
    (port,) = take_free_ports(1)
    block: dict[str, Any] = {"name": name, "listen": f"127.0.0.1:{port}", "routes": list(routes)}
    if password is not None:
        credentials = ClusterRoutes(name, port, routes, password)
        block |= {"authorization": credentials.authorization(), "routes": credentials.route_urls()}
    if tls is not None:
        block["tls"] = {"cert_file": str(tls.cert), "key_file": str(tls.key), "ca_file": str(tls.ca), "verify": True}
    return NatsServer(
        directory / "store",
        log_file=directory / "nats.log",
        server_name=f"intruder-{directory.parent.name}-{directory.name}",
        config=f"cluster {json.dumps(block)}",
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


async def test_a_server_without_the_route_password_does_not_join(nats_cluster: Cluster, tmp_path: Path) -> None:
    members = nats_cluster.servers.members
    refused = {"no-credentials": None, "wrong-password": "wrong-password"}
    with contextlib.ExitStack() as running:  # both at once: each is given the same time to join
        servers = {
            name: running.enter_context(intruder(*member_routes(nats_cluster), tmp_path / name, password))
            for name, password in refused.items()
        }
        joins = await asyncio.gather(*(joined(members, f"intruder-{tmp_path.name}-{n}", JOIN_WAIT) for n in servers))
        assert not any(joins), dict(zip(servers, joins, strict=True))
        seen = await asyncio.gather(*(sees_cluster_traffic(nats_cluster, s, wait=2.0) for s in servers.values()))
        assert all(s == (False, False) for s in seen), dict(zip(servers, seen, strict=True))

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
    directory: Path, index: int, route_ports: list[int], tls: Path, monkeypatch: pytest.MonkeyPatch
) -> NatsServer:
    """Start member ``index`` of deploy/k8s/nats.yaml's StatefulSet on loopback: its nats.conf with the client,
    monitoring and route ports and the store moved to this host and /tls moved to ``tls`` (the directory of
    Secret symbi-nats-tls), its environment as Kubernetes builds it from the container's ``env`` (``$(VAR)``
    expanded) with each member's route host moved to loopback."""
    docs = [d for d in yaml.safe_load_all((K8S / "nats.yaml").read_text()) if d]
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["nats.conf"]
    (container,) = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"]
    moved = {"port: 4222\n": "", "http_port: 8222\n": "", "store_dir: /data\n": ""}
    moved["port: 6222\n"] = f"listen: 127.0.0.1:{route_ports[index]}\n"
    moved['"/tls/'] = f'"{tls}/'
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


def foreign_party(directory: Path, trusted_ca: Path) -> PartyFiles:
    """nats-server's certificate and key as another CA (not the deployment's) issues them, with every name of
    :data:`SERVER_NAMES`, in a party directory whose ``ca.pem`` is ``trusted_ca``: the certificate is the only
    thing wrong with it."""
    ca_key, ca = new_ca()
    key, cert = issue(ca_key, ca, NATS_PARTY, server_names=SERVER_NAMES)
    files = PartyFiles(directory)
    directory.mkdir(mode=0o700, parents=True)
    shutil.copy(trusted_ca, files.ca)
    write_pem_pair(directory, key, cert)
    return files


async def logs_in(url: str, tls: ssl.SSLContext | None) -> bool:
    """Whether a client of ``url`` (its credentials in it) with ``tls`` is let in."""
    try:
        client = await nats.connect(
            **server_options(url), tls=tls, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
        )
    except (OSError, nats.errors.Error, TimeoutError):  # ssl.SSLError is an OSError
        return False
    await client.close()
    return True


async def logged(log: Path, offset: int, text: str, timeout: float = 5.0) -> bool:
    """Whether ``text`` appears in ``log`` after its first ``offset`` bytes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while text not in (await asyncio.to_thread(log.read_bytes))[offset:].decode(errors="replace"):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def sees_live_event(publisher: NatsClient, server: NatsServer, wait: float) -> bool:
    """Whether a client of ``server`` receives an event ``publisher`` publishes through the cluster within
    ``wait`` seconds (published again every half second: interest reaches the cluster over the route)."""
    spy: NatsClient = await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
    try:
        sub = await spy.subscribe("evt.>")
        await spy.flush()
        payload, subject = uuid.uuid4().bytes, f"evt.agent.{uuid.uuid4()}"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            await publisher.publish(subject, payload)
            await publisher.flush()
            try:
                return (await sub.next_msg(timeout=0.5)).data == payload
            except nats.errors.TimeoutError:
                continue
        return False
    finally:
        await spy.close()


async def test_the_kubernetes_nats_members_speak_mutual_tls_and_route_only_with_the_route_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/k8s/nats.yaml's configuration, run by three real nats-servers with the TLS material of
    ``symbi deploy init``: the members join each other over TLS with the route password from their
    environment; a client with its party's certificate and its password logs in, one without a certificate, with
    another CA's or with another party's is refused; a server with the members' route URLs joins (and sees
    events) only with both a certificate of the deployment's CA and the route password."""
    passwords = {user: "p" + secrets.token_urlsafe(16) for user in nats_users()}
    for user, password in passwords.items():
        monkeypatch.setenv(password_env_name(user), password)
    route_password = "p" + secrets.token_urlsafe(24)
    monkeypatch.setenv(ROUTE_PASSWORD_ENV, route_password)
    deploy = tmp_path / "deploy"
    ensure_tls(deploy)
    nats_tls = party_files(deploy, NATS_PARTY)
    foreign = foreign_party(tmp_path / "foreign", nats_tls.ca)
    route_ports = take_free_ports(3)
    routes = tuple(f"nats-route://127.0.0.1:{port}" for port in route_ports)
    members: list[NatsServer] = []
    try:
        for i in range(3):
            members.append(
                start_k8s_member(tmp_path / f"symbi-nats-{i}", i, route_ports, nats_tls.directory, monkeypatch)
            )
        for i in range(3):  # the members join each other over TLS with the password from their environment
            assert await joined(members, f"symbi-nats-{i}", 30), f"symbi-nats-{i} did not join"
        async with httpx.AsyncClient(timeout=5) as http:
            varz = (await http.get(members[0].monitoring_url + "/varz")).json()  # plain HTTP: probes, Prometheus
        assert (varz["tls_required"], varz["tls_verify"]) == (True, True)
        assert (varz["cluster"]["tls_required"], varz["cluster"]["tls_verify"]) == (True, True)

        url = with_credentials(members[0].url, "lifecycle", passwords["lifecycle"])
        assert url.startswith("tls://"), url
        lifecycle = party_files(deploy, "lifecycle")
        lifecycle_tls = client_tls(str(lifecycle.ca), str(lifecycle.cert), str(lifecycle.key))
        assert await logs_in(url, lifecycle_tls)
        # The certificate names the user (verify_and_map): the lifecycle's password with the scheduler's is refused.
        scheduler = party_files(deploy, "scheduler")
        assert not await logs_in(url, client_tls(str(scheduler.ca), str(scheduler.cert), str(scheduler.key)))
        # The same user and password, without a certificate or with one of another CA: refused in the handshake.
        log = tmp_path / "symbi-nats-0" / "nats.log"
        for context, reason in [
            (client_tls(str(lifecycle.ca)), "client didn't provide a certificate"),
            (
                client_tls(str(foreign.ca), str(foreign.cert), str(foreign.key)),
                "certificate signed by unknown authority",
            ),
        ]:
            offset = log.stat().st_size
            assert not await logs_in(url, context), reason
            assert await logged(log, offset, reason), reason

        # Route intruders, each lacking one thing: TLS, the password, or a certificate of the deployment's CA.
        refused: dict[str, tuple[str | None, PartyFiles | None]] = {
            "no-tls": (route_password, None),
            "no-credentials": (None, nats_tls),
            "wrong-password": ("wrong-password", nats_tls),
            "foreign-ca": (route_password, foreign),
        }
        publisher = await nats.connect(
            **server_options(url), tls=lifecycle_tls, allow_reconnect=False, connect_timeout=2
        )
        try:
            with contextlib.ExitStack() as running:  # all four at once: each is given the same time to join
                servers = {
                    name: running.enter_context(intruder("symbi", routes, tmp_path / name, presented, tls))
                    for name, (presented, tls) in refused.items()
                }
                names = [f"intruder-{tmp_path.name}-{name}" for name in servers]
                joins = await asyncio.gather(*(joined(members, name, JOIN_WAIT) for name in names))
                assert not any(joins), dict(zip(servers, joins, strict=True))
                seen = await asyncio.gather(*(sees_live_event(publisher, s, wait=2.0) for s in servers.values()))
                assert not any(seen), dict(zip(servers, seen, strict=True))
            # With the password and a certificate of the deployment's CA it joins and sees the events: the checks
            # above can fail.
            with intruder("symbi", routes, tmp_path / "joined", route_password, nats_tls) as accepted:
                assert await joined(members, f"intruder-{tmp_path.name}-joined", 30)
                assert await sees_live_event(publisher, accepted, wait=10.0)
        finally:
            await publisher.close()
    finally:
        for member in members:
            member.stop()


def test_a_cluster_member_refuses_to_start_without_a_route_password() -> None:
    with pytest.raises(InfraError, match="route password is required"):
        ClusterRoutes("symbi", 6222, ("nats-route://127.0.0.1:6222",), "")
