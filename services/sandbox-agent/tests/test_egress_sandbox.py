"""Network-enabled tasks in real sandboxes (runc and gVisor ``runsc-uds``): the workload's only way out is its
egress proxy, reached through ``egress.sock`` in its channel directory by the SDK's forwarder.

The internet is played by local HTTPS/HTTP servers on 127.0.0.2 with a test CA (egress_support); the task's
input is the CA's PEM, so ``SSL_CERT_FILE=/symbi/input`` makes ordinary clients trust it. The daemon's
``[egress]`` settings map the test names and allow 127.0.0.2 (127.0.0.1 and 169.254.169.254 stay refused).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from symbi_common.settings import Settings
from symbi_contracts.sandbox_agent.events import ExecutionEgress, ExecutionExited, ExecutionStarted

from .conftest import Scheduler, limits, running_agent
from .egress_support import CertFiles, egress_toml, make_ca, server_context, upstream
from .test_channel import agent_image

__all__ = ["agent_image"]  # a fixture, used by name

WORKLOAD = r"""
import json, os, socket, ssl, sys, time, urllib.error, urllib.request

P, H, OUT = int(os.environ["UP_HTTPS"]), int(os.environ["UP_HTTP"]), os.environ["HOST_IP"]
out = {"proxy_env": os.environ.get("HTTPS_PROXY")}

def get(url, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=20) as r:
            return [r.status, json.loads(r.read())]
    except urllib.error.HTTPError as e:
        return [e.code, e.headers.get("X-Symbi-Egress-Refused")]
    except Exception as e:  # a refused CONNECT: urllib says "Tunnel connection failed: 403 Forbidden"
        return ["error", str(e)[:200]]

def sni_other():
    raw = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    target = f"allowed.test:{P}"
    raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    raw.recv(4096)
    try:
        with ssl.create_default_context().wrap_socket(raw, server_hostname="other.test"):
            return "connected"
    except Exception as e:
        return type(e).__name__

def direct(address, port):
    try:
        socket.create_connection((address, port), timeout=3).close()
        return "connected"
    except OSError as e:
        return f"errno {e.errno}"

def udp_dns():
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(2)
        u.sendto(b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x07allowed\x04test\x00\x00\x01\x00\x01", ("8.8.8.8", 53))
        u.recvfrom(512)
        return "answered"
    except OSError as e:
        return f"errno {e.errno}"

def resolve():
    try:
        return socket.getaddrinfo("allowed.test", P)[0][4][0]
    except OSError as e:
        return f"errno {e.errno}"

out["https"] = get(f"https://allowed.test:{P}/hello")
out["http"] = get(f"http://allowed.test:{H}/hello")
out["not_allowed"] = get(f"https://other.test:{P}/")
out["loopback"] = get(f"https://loop.test:{P}/")
out["metadata"] = get("http://meta.test/latest/meta-data/")
out["ipv6_literal"] = get(f"http://[::1]:{H}/")
out["fronting"] = get(f"http://allowed.test:{H}/", {"Host": "other.test"})
out["sni"] = sni_other()
out["direct_host"] = direct(OUT, H)
out["direct_internet"] = direct("1.1.1.1", 443)
out["dns"] = resolve()
out["udp_dns"] = udp_dns()
if os.environ.get("SDK"):
    from symbi_agent import Agent, SymbiAgentError
    with Agent() as a:
        r = a.http.get(f"https://allowed.test:{P}/hello")
        out["sdk_https"] = [r["status"], json.loads(r["body"])]
        r = a.http.request("POST", f"http://allowed.test:{H}/echo", body="hello", headers={"X-Symbi-Agent": "x"})
        out["sdk_http"] = [r["status"], json.loads(r["body"])]
        r = a.http.get(f"http://allowed.test:{H}/hello/\u65e5\u672c?q=\u00fc")  # (percent-encoded on its way)
        out["sdk_unicode"] = r["status"]
        bad = {
            "sdk_header_text": ("GET", {"Authorization": "Bearer s3cret \u2603"}),
            "sdk_header_lines": ("GET", {"X-A": "a\r\nHost: other.test"}),
            "sdk_method": ("GET /x HTTP/1.1\r\nHost: other.test\r\n\r\nGET", {}),
        }
        for name, (method, headers) in bad.items():
            try:
                a.http.request(method, f"http://allowed.test:{H}/echo", headers=headers)
                out[name] = "allowed"
            except SymbiAgentError as e:
                out[name] = e.code
        for name, url in (("sdk_loopback", f"https://loop.test:{P}/"), ("sdk_other", f"http://other.test:{H}/")):
            try:
                a.http.get(url)
                out[name] = "allowed"
            except SymbiAgentError as e:
                out[name] = [e.code, e.details.get("reason")]
if os.environ.get("FETCH"):
    started = time.monotonic()
    with urllib.request.urlopen(f"https://allowed.test:{P}/bytes?n={os.environ['FETCH']}", timeout=60) as r:
        size = len(r.read())
    out["fetch"] = [size, time.monotonic() - started]
print(json.dumps(out))
"""


@dataclass
class World:
    ca: CertFiles
    https: int
    http: int
    host_ip: str
    settings: Settings


def host_ip() -> str:
    """An address of this machine outside loopback (the route to the internet's source address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the source address
        return str(s.getsockname()[0])


@pytest.fixture
async def world(tmp_path: Path, agent_settings: Callable[..., Settings]) -> AsyncIterator[World]:
    ca = make_ca(tmp_path / "ca")
    config = egress_toml(tmp_path / "symbi.toml", ca)
    async with upstream(server_context(ca)) as tls_up, upstream(bind="0.0.0.0") as plain_up:
        yield World(ca, tls_up.port, plain_up.port, host_ip(), agent_settings(SYMBI_CONFIG_PATH=str(config)))


async def run(
    world: World, scheduler: Scheduler, image: str, tier: str, actions: bool = False, **env: str
) -> tuple[dict[str, Any], Any]:
    async with running_agent(world.settings) as agent:
        allow = [f"allowed.test:{world.https}", f"allowed.test:{world.http}", f"loop.test:{world.https}"]
        allow += ["meta.test", f"[::1]:{world.http}"]
        task_id = await scheduler.submit(
            agent.host_id,
            ["python3", "-c", WORKLOAD],
            tier=tier,
            image=image,
            actions=actions,
            input=world.ca.ca_pem.read_bytes(),
            network_access=allow,
            lim=limits(network_io_mbps=int(env.pop("MBPS", "10")), execution_timeout_s=90),
            env={
                "SSL_CERT_FILE": "/symbi/input",
                "UP_HTTPS": str(world.https),
                "UP_HTTP": str(world.http),
                "HOST_IP": world.host_ip,
                **env,
            },
        )
        result = await scheduler.result(task_id, timeout=150)
    assert isinstance(result.terminal, ExecutionExited), (result.terminal, result.stderr[-2000:])
    assert result.terminal.exit_code == 0, result.stderr[-2000:]
    return json.loads(result.stdout.decode().strip().splitlines()[-1]), result


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_the_proxy_is_the_only_way_out(world: World, scheduler: Scheduler, agent_image: str, tier: str) -> None:
    out, result = await run(world, scheduler, agent_image, tier, actions=True, SDK="1")
    assert out["proxy_env"] == "http://127.0.0.1:3128"
    # An allowed name works with an ordinary client, over HTTPS (CONNECT) and plain HTTP.
    assert out["https"][0] == 200
    assert out["https"][1]["host"] == f"allowed.test:{world.https}"
    assert out["https"][1]["tls"] is True
    assert out["http"] == [200, out["http"][1]]
    assert out["http"][1]["tls"] is False
    # Every bypass is refused.
    assert "403" in out["not_allowed"][1]  # a CONNECT refusal: urllib reports the status only
    assert "403" in out["loopback"][1]
    assert out["metadata"] == [403, "blocked_address"]
    assert out["ipv6_literal"] == [403, "ip_literal"]
    assert out["fronting"] == [403, "host_mismatch"]
    assert out["sni"] != "connected"
    # No route, no DNS, no UDP: a socket that ignores the proxy settings goes nowhere.
    assert out["direct_host"].startswith("errno")
    assert out["direct_internet"].startswith("errno")
    assert out["dns"].startswith("errno")
    assert out["udp_dns"].startswith("errno")
    # The SDK's http.request: the runtime makes the request through the same proxy and rules.
    assert out["sdk_https"][0] == 200
    assert out["sdk_https"][1]["host"] == f"allowed.test:{world.https}"
    assert out["sdk_http"][0] == 200
    assert (out["sdk_http"][1]["method"], out["sdk_http"][1]["body"]) == ("POST", 5)
    assert out["sdk_http"][1]["symbi_headers"] == []
    assert isinstance(out["sdk_unicode"], int)
    assert out["sdk_header_text"] == out["sdk_header_lines"] == out["sdk_method"] == "malformed_request"
    assert out["sdk_loopback"] == ["denied", "blocked_address"]
    assert out["sdk_other"] == ["denied", "not_allowed"]

    started = result.of(ExecutionStarted)[0]
    assert started.hardening["network"].startswith("none; egress proxy /symbi/run/egress.sock")
    assert started.runtime == ("runc" if tier == "tier1" else "runsc-uds")
    assert started.limits.network_io_mbps == 10
    egress = result.of(ExecutionEgress)
    allowed = [e for e in egress if e.outcome == "allowed"]
    denied = {e.reason: e for e in egress if e.outcome == "denied"}
    assert {(e.method, e.host, e.address, e.access) for e in allowed} == {
        ("CONNECT", "allowed.test", "127.0.0.2", "proxy"),
        ("GET", "allowed.test", "127.0.0.2", "proxy"),
        ("CONNECT", "allowed.test", "127.0.0.2", "gateway"),
        ("POST", "allowed.test", "127.0.0.2", "gateway"),
        ("GET", "allowed.test", "127.0.0.2", "gateway"),  # the path that is not ASCII, percent-encoded
    }
    assert all(e.bytes_in > 0 and e.bytes_out > 0 and e.decision is not None for e in allowed)
    assert set(denied) >= {"not_allowed", "blocked_address", "ip_literal", "host_mismatch", "sni_mismatch"}
    blocked = {e.address for e in egress if e.reason == "blocked_address"}
    assert blocked == {"127.0.0.1", "169.254.169.254"}
    assert all(e.agent_id == "agent-1" for e in egress)
    usage = result.terminal.usage
    assert usage.net_in_bytes >= sum(e.bytes_in for e in egress)
    assert usage.net_out_bytes >= sum(e.bytes_out for e in allowed)


@pytest.mark.parametrize("tier", ["tier1", "tier2"])
async def test_bandwidth_is_held_to_the_definitions_limit(
    world: World, scheduler: Scheduler, agent_image: str, tier: str
) -> None:
    n = 3_000_000
    out, result = await run(world, scheduler, agent_image, tier, MBPS="1", FETCH=str(n))
    size, elapsed = out["fetch"]
    assert size == n
    rate = n / elapsed
    # 1 MB/s: never above +20%; below only as much as a loaded 2-core machine slows the copy down.
    assert 500_000 <= rate <= 1_200_000, f"{rate / 1e6:.2f} MB/s through a 1 MB/s limit"
    fetched = max(result.of(ExecutionEgress), key=lambda e: e.bytes_in)
    assert fetched.bytes_in >= n
    assert result.terminal.usage.net_in_bytes >= n


NO_NETWORK = r"""
import json
from symbi_agent import Agent, SymbiAgentError
with Agent() as a:
    try:
        a.http.get("https://allowed.test/")
        print(json.dumps("allowed"))
    except SymbiAgentError as e:
        print(json.dumps([e.code, e.message]))
"""


async def test_without_network_access_http_request_is_not_available(
    world: World, scheduler: Scheduler, agent_image: str
) -> None:
    async with running_agent(world.settings) as agent:
        task_id = await scheduler.submit(
            agent.host_id, ["python3", "-c", NO_NETWORK], image=agent_image, actions=True, lim=limits()
        )
        result = await scheduler.result(task_id, timeout=90)
    assert isinstance(result.terminal, ExecutionExited), result.stderr[-2000:]
    code, message = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert code == "not_available"
    assert "no network" in message
    assert result.of(ExecutionEgress) == []
    assert result.of(ExecutionStarted)[0].hardening["network"] == "none"
