"""How fast a key registry change reaches running services, and what re-sealing data keys costs.

A throwaway nats-server and keyring; lifecycle and scheduler runtimes (no database) in this process,
each following the ``REGISTRY`` stream. Measured:

* ``publish → applied``: ``symbi keys rotate lifecycle`` (the files), then its publication, until both
  running services use the new version (the lifecycle also signs with its new key);
* the re-seal scan every service runs at start over the data keys it writes, when nothing changed;
* re-sealing them after a reader's wrap key rotated (one new X25519 sealed copy per generation).

Before, a change took effect only when every service restarted. The baseline printed is the
publication alone (acked by JetStream). Target: a change applied in < 100 ms (p99).

    uv run python bench/registry_live.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid

import _common
from symbi_common.key_material import read_key_file
from symbi_common.keyfiles import rotate_service_key, rotate_wrap_key
from symbi_common.registry_stream import encode_signed, publish, read_signed_files
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000


async def run(rotations: int, records: int) -> None:
    print(_common.machine_summary())
    async with _common.nats_server() as server:
        with _common.keyring() as keys_dir:
            env = {
                "SYMBI_NATS_URL": server.url,
                "SYMBI_KEYS_DIR": str(keys_dir),
                "SYMBI_POLICY__ENFORCEMENT": "allow-all",
                "SYMBI_LOG_LEVEL": "error",
            }
            rts = [ServiceRuntime(n, load_settings(env=env), use_database=False) for n in ("lifecycle", "scheduler")]
            for rt in rts:
                await rt.start()
            nc = await _common.connect(server.url)
            root = read_key_file(keys_dir / "root.pub")
            try:
                latencies, acked = [], []
                for _ in range(rotations):
                    key = rotate_service_key(keys_dir, "lifecycle")
                    want = rts[0].registry.version + 1
                    t0 = time.perf_counter()
                    await publish(nc, read_signed_files(keys_dir), root)
                    acked.append(time.perf_counter() - t0)
                    for _ in itertools.count():
                        if all(rt.registry.version == want for rt in rts) and rts[0].store.signer.key_id == key.key_id:
                            break
                        await asyncio.sleep(0.0005)
                    latencies.append(time.perf_counter() - t0)
                p50, p99 = percentiles(latencies)
                _, p99_acked = percentiles(acked)
                print(
                    f"publish -> applied in 2 running services: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({rotations} rotations)"
                )
                print(f"publish -> acked by JetStream (the baseline): p99 {p99_acked:.1f} ms")

                lifecycle = rts[0]
                for _ in range(records):
                    await lifecycle.datakeys.current(f"agent.{uuid.uuid4().hex[:12]}")
                t0 = time.perf_counter()
                unchanged = await lifecycle.datakeys.reseal(("agent",))
                scan = time.perf_counter() - t0
                print(
                    f"re-seal scan, nothing to change: {records} data keys in {scan * 1000:.0f} ms ({unchanged} changed)"
                )

                rotate_wrap_key(keys_dir, "scheduler")
                await rts[1].stop()  # the lifecycle's share alone: re-seal the agents' keys to the scheduler's new key
                t0 = time.perf_counter()
                await lifecycle.keys.offer(encode_signed(read_signed_files(keys_dir)))
                resealed = time.perf_counter() - t0
                print(f"re-seal after a reader's wrap key rotation: {records} data keys in {resealed * 1000:.0f} ms")
            finally:
                await nc.drain()
                for rt in rts:
                    await rt.stop()
    print(_common.result_line("registry_live", p99, p99_acked, "ms", "p99<100", p99 < 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a small run")
    args = parser.parse_args()
    asyncio.run(run(rotations=10 if args.quick else 50, records=200 if args.quick else 1000))


if __name__ == "__main__":
    main()
