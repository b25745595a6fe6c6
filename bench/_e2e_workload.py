"""The e2e benchmark's trivial workload, the same on both sides: ``cat`` in ``symbi/busybox:1`` with fixed
limits and no network; its result must be its input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from symbi_contracts.lifecycle.config import ResourceLimits

IMAGE = "symbi/busybox:1"
COMMAND = ("cat",)
INPUT = b"hello from the e2e benchmark\n"
MEMORY_MB = 64
DISK_IO_MBPS = 50
TIMEOUT_S = 30.0


class BenchError(Exception):
    """A task or a raw run did not give the expected result; the measurement would be meaningless."""


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_cores: float

    def spec(self) -> ResourceLimits:
        return ResourceLimits(
            memory_mb=self.memory_mb,
            cpu_cores=self.cpu_cores,
            disk_io_mbps=DISK_IO_MBPS,
            network_io_mbps=0,
            execution_timeout_s=TIMEOUT_S,
        )

    def config(self) -> dict[str, Any]:
        return {
            "memory_mb": self.memory_mb,
            "cpu_cores": self.cpu_cores,
            "disk_io_mbps": DISK_IO_MBPS,
            "network_io_mbps": 0,
            "execution_timeout_s": TIMEOUT_S,
        }
