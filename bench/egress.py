"""Throughput and added latency of the egress proxy against a direct connection, on loopback, same run.

Processes, as in production: an upstream HTTP server (standing in for the internet, on 127.0.0.1), the
daemon's egress proxy on a Unix socket (allow-list, static resolver, address checks, a decision per
connection through the enforcer and the embedded Cedar point with its answers remembered per policy
version, as in the daemon; token buckets with a limit far above the traffic; one record per connection),
and the SDK's forwarder (``symbi_agent.forward``, the container's side, TCP 127.0.0.1 → the socket).
The client measures, with the same concurrency both ways:

- latency: sequential small GETs, one new connection each, direct vs ``forwarder → proxy → upstream``;
  added = p50(proxy) - p50(direct);
- throughput: ``--streams`` concurrent connections each downloading ``--mb`` MB, direct vs through both.

Plain HTTP (no TLS), so the proxy's own cost is not hidden behind encryption. The RESULT line: ours =
throughput through the proxy (MB/s), baseline = direct; pass when ratio ≥ 0.5 and p50 added ≤ 1 ms.

    uv run python bench/egress.py [--quick] [--requests N] [--streams N] [--mb N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

NAME = "bench.test"
CHUNK = b"x" * (256 * 1024)
POLICY = 'permit(principal, action == Action::"network.connect", resource);\n'


# --- roles (each runs in its own process) ---------------------------------------------------------


def write_port(path: str, port: int) -> None:
    Path(path).write_text(str(port))


async def upstream_role(port_file: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1]
            n = int(head.rsplit(b"=", 1)[1]) if b"n=" in head else 2
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n)
            while n > 0:
                writer.write(CHUNK[:n])
                n -= len(CHUNK)
                await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    write_port(port_file, server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def proxy_role(socket_path: str, port: int) -> None:
    from symbi_common.policy.cedar import compile_policies
    from symbi_common.policy.engine import PolicyEngine
    from symbi_common.policy.follower import PolicyFollower
    from symbi_common.policy.hooks import Enforcer
    from symbi_common.policy.points import EmbeddedDecisionPoint
    from symbi_common.settings_sandbox import EgressSettings
    from symbi_sandbox_agent.bus.decisions import remembered
    from symbi_sandbox_agent.egress.host import EgressHost
    from symbi_sandbox_agent.egress.internal import Caller

    # The daemon's decision path: the embedded point over a policy engine (here built directly instead of
    # followed from the event stream), its answers remembered per policy version, the one enforcer.
    follower = PolicyFollower(None, None, None)  # type: ignore[arg-type]  # never started: no stream to follow
    follower.engine = PolicyEngine({"bench": compile_policies("bench", POLICY)}, 1)
    enforcer = Enforcer.around(remembered(EmbeddedDecisionPoint(follower)))
    settings = EgressSettings(hosts={NAME: "127.0.0.1"}, system_resolver=False, allow_addresses=["127.0.0.1/32"])
    host = EgressHost(settings)
    proxy = host.proxy(Caller(agent_id="bench", task_id="bench"), (f"{NAME}:{port}",), 100_000, enforcer)
    records: list[object] = []
    proxy.record = records.append
    await proxy.open(socket_path)
    await asyncio.Event().wait()


async def forward_role(socket_path: str, port_file: str) -> None:
    from symbi_agent.forward import Forwarder

    forwarder = Forwarder(socket_path, 0)
    write_port(port_file, await forwarder.start())
    await asyncio.Event().wait()


# --- the client -----------------------------------------------------------------------------------


async def fetch(host: str, port: int | str, target: str, n: int) -> int:
    if isinstance(port, str):  # the proxy's Unix socket itself, without the forwarder
        reader, writer = await asyncio.open_unix_connection(port, limit=1024 * 1024)
    else:
        reader, writer = await asyncio.open_connection(host, port, limit=1024 * 1024)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {NAME}:{UP}\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    got = 0
    while got < n:
        data = await reader.read(1024 * 1024)
        if not data:
            break
        got += len(data)
    writer.close()
    return got


async def latency(port: int | str, via_proxy: bool, requests: int) -> list[float]:
    target = f"http://{NAME}:{UP}/hello" if via_proxy else "/hello"
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        assert await fetch("127.0.0.1", port, target, 2) == 2
        out.append((time.perf_counter() - started) * 1000)
    return out


async def throughput(port: int | str, via_proxy: bool, streams: int, mb: int) -> float:
    n = mb * 1_000_000
    target = f"http://{NAME}:{UP}/bytes?n={n}" if via_proxy else f"/bytes?n={n}"
    started = time.perf_counter()
    sizes = await asyncio.gather(*(fetch("127.0.0.1", port, target, n) for _ in range(streams)))
    elapsed = time.perf_counter() - started
    assert all(s == n for s in sizes), sizes
    return sum(sizes) / elapsed / 1e6


UP = 0


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", *args])


def wait_socket(path: str) -> None:
    for _ in range(300):
        if Path(path).exists():
            return
        time.sleep(0.05)
    raise SystemExit(f"{path} did not appear: the proxy did not start")


def wait_file(path: Path) -> int:
    for _ in range(300):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise SystemExit(f"{path} was not written: a role did not start")


async def main(requests: int, streams: int, mb: int, rounds: int) -> None:
    global UP
    print(_common.machine_summary())
    print(f"load average {os.getloadavg()[0]:.2f}; {requests} requests, {streams} streams x {mb} MB")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="symbi-bench-egress-") as tmp:
        try:
            procs.append(spawn("upstream", f"{tmp}/up"))
            UP = wait_file(Path(f"{tmp}/up"))
            sock = f"{tmp}/egress.sock"
            procs.append(spawn("proxy", sock, str(UP)))
            wait_socket(sock)
            procs.append(spawn("forward", sock, f"{tmp}/fwd"))
            fwd = wait_file(Path(f"{tmp}/fwd"))
            await latency(UP, False, 20)  # warm up both paths
            await latency(fwd, True, 20)
            direct_ms, proxy_ms, socket_ms = [], [], []
            for _ in range(4):  # interleaved rounds: a load spike hits every path alike
                direct_ms += await latency(UP, False, requests // 4)
                proxy_ms += await latency(fwd, True, requests // 4)
                socket_ms += await latency(sock, True, requests // 4)
            direct_tp, proxy_tp, socket_tp = [], [], []
            for _ in range(rounds):
                direct_tp.append(await throughput(UP, False, streams, mb))
                proxy_tp.append(await throughput(fwd, True, streams, mb))
                socket_tp.append(await throughput(sock, True, streams, mb))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
    d50, p50 = statistics.median(direct_ms), statistics.median(proxy_ms)
    d99 = statistics.quantiles(direct_ms, n=100)[98]
    p99 = statistics.quantiles(proxy_ms, n=100)[98]
    added = p50 - d50
    dtp, ptp = statistics.median(direct_tp), statistics.median(proxy_tp)
    s50, stp = statistics.median(socket_ms), statistics.median(socket_tp)
    print(f"latency direct   p50 {d50:.3f} ms  p99 {d99:.3f} ms (new connection, 2-byte body)")
    print(f"latency proxied  p50 {p50:.3f} ms  p99 {p99:.3f} ms  added p50 {added:.3f} ms")
    print(f"latency proxy socket only (no forwarder: what a Tier-1 network to the proxy could save) p50 {s50:.3f} ms")
    print(f"throughput proxy socket only {stp:.0f} MB/s")
    print(f"throughput direct  {dtp:.0f} MB/s  (rounds {', '.join(f'{x:.0f}' for x in direct_tp)})")
    print(f"throughput proxied {ptp:.0f} MB/s  (rounds {', '.join(f'{x:.0f}' for x in proxy_tp)})")
    ok = ptp >= 0.5 * dtp and added <= 1.0
    print(_common.result_line("egress", ptp, dtp, "MB/s", "ratio>=0.5,p50_added<=1ms", ok))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--mb", type=int, default=0)
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "upstream":
            asyncio.run(upstream_role(rest[0]))
        elif role == "proxy":
            asyncio.run(proxy_role(rest[0], int(rest[1])))
        else:
            asyncio.run(forward_role(rest[0], rest[1]))
    else:
        asyncio.run(
            main(
                args.requests or (200 if args.quick else 2000),
                args.streams,
                args.mb or (16 if args.quick else 64),
                3 if args.quick else 5,
            )
        )
