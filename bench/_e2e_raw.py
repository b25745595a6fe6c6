"""The e2e benchmark's baseline: the sandbox-agent's hardened container run straight through the Docker SDK,
and ``docker run --rm -i`` with the same limits."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

from _e2e_workload import COMMAND, DISK_IO_MBPS, IMAGE, INPUT, TIMEOUT_S, BenchError, Limits
from symbi_common.decisions import DecisionRecord
from symbi_contracts.lifecycle.config import Workload
from symbi_contracts.scheduler.events import TaskAssigned, TaskSubmitted
from symbi_sandbox_agent.cgroups import remove_cgroup_tree
from symbi_sandbox_agent.docker_host import DockerHost
from symbi_sandbox_agent.spec import CGROUP_PARENT, GVISOR_MIN_PIDS, HostCapabilities, SandboxDefaults, build_spec
from symbi_sandbox_agent.tasks import fold_task


class RawDocker:
    """The sandbox-agent's container, run straight through the Docker SDK (its host id only names cgroups)."""

    def __init__(self, host_id: str, limits: Limits, work: Path) -> None:
        self.docker = DockerHost()
        self.caps: HostCapabilities = self.docker.info().capabilities
        self.host_id = host_id
        self.limits = limits
        self.work = work
        work.mkdir(parents=True, exist_ok=True)

    @property
    def tiers(self) -> tuple[str, ...]:
        return self.caps.tiers

    def run(self, tier: str) -> float:
        task_id = uuid.uuid4().hex[:16]
        assigned = TaskAssigned(
            host_id=self.host_id,
            tier=tier,
            workload=Workload(image=IMAGE, command=COMMAND),
            limits=self.limits.spec(),
            risk_score=0.0,
            risk_factors={},
            attempt=1,
            decision=DecisionRecord(action="task.allocate", effect="allow", policy_version=0),
        )
        task = fold_task(task_id, [TaskSubmitted(agent_id="raw", input=INPUT, priority="normal"), assigned])
        spec = build_spec(task, self.host_id, self.caps, SandboxDefaults())
        started = time.perf_counter()
        input_file = self.work / spec.name
        input_file.write_bytes(INPUT)
        runner = self.docker.runner(spec.runtime)
        cid = runner.create(spec, str(input_file))
        try:
            sock = runner.attach(cid)
            runner.start(cid)
            runner.send_input(sock, INPUT)
            out = b"".join(data for stream, data in runner.frames(sock) if stream == 1)
            runner.close_socket(sock)
            state = runner.wait(cid, TIMEOUT_S)
        finally:
            self.docker.remove(cid)
            remove_cgroup_tree(spec.cgroup_parent)
            input_file.unlink(missing_ok=True)
        took = time.perf_counter() - started
        if out != INPUT or state.exit_code != 0:
            raise BenchError(f"raw {tier} run: exit {state.exit_code}, stdout {out[:80]!r}")
        return took

    def cli_argv(self, tier: str) -> list[str]:
        """``docker run`` with the limits and hardening of the sandbox spec."""
        defaults = SandboxDefaults()
        pids = max(defaults.pids_limit, GVISOR_MIN_PIDS) if tier == "tier2" else defaults.pids_limit
        mem = f"{self.limits.memory_mb}m"
        device = self.caps.blkio_device
        rate = f"{device}:{DISK_IO_MBPS}mb"
        blkio = ("--device-read-bps", rate, "--device-write-bps", rate) if device else ()
        return [
            *("docker", "run", "--rm", "-i", "--runtime", "runsc" if tier == "tier2" else "runc", "--network", "none"),
            *("--memory", mem, "--memory-swap", mem, "--cpus", str(self.limits.cpu_cores)),
            *("--pids-limit", str(pids), "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,noexec,size=16m"),
            *("--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", defaults.user),
            *("--log-driver", "none", "--cgroup-parent", f"{CGROUP_PARENT}/{self.host_id}"),
            *blkio,
            *(IMAGE, *COMMAND),
        ]

    async def cli_run(self, tier: str) -> float:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *self.cli_argv(tier), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate(INPUT)
        took = time.perf_counter() - started
        if proc.returncode != 0 or out != INPUT:
            raise BenchError(f"docker run {tier} failed ({proc.returncode}): {err.decode(errors='replace')[:300]}")
        return took

    def close(self) -> None:
        remove_cgroup_tree(f"{CGROUP_PARENT}/{self.host_id}")
        self.docker.close()
