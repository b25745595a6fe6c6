"""py-spy samples of the runtime's processes while a benchmark window runs (``bench/e2e.py --profile DIR``)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sampled(pids: dict[str, int], out: Path | None) -> Iterator[None]:
    """py-spy samples each named process (on-CPU stacks only, 200 Hz) while the block runs."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [
                *("uvx", "py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw"),
                *("--nonblocking", "--gil", "--output", str(out / f"{name}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    time.sleep(2.0)  # py-spy attaches
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)
        summarise_profiles(out, list(pids))


def summarise_profiles(out: Path, names: list[str]) -> None:
    """Per process: the share of samples in each function (self) and under each of our functions (total)."""
    lines = []
    for name in names:
        own: dict[str, int] = {}
        under: dict[str, int] = {}
        total = 0
        path = out / f"{name}.txt"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [
                f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                for f in stack.split(";")
                if f
            ]
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + n
            for f in set(frames):
                under[f] = under.get(f, 0) + n
        lines.append(f"== {name}: {total} samples")
        lines += [f"  self  {v / total:6.1%}  {k}" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:40]]
        lines += [f"  total {v / total:6.1%}  {k}" for k, v in sorted(under.items(), key=lambda kv: -kv[1])[:80]]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print(f"  profiles in {out} (summary.txt)", flush=True)
