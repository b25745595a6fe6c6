"""The agent image (``deploy/host/agent-image.sh``) carries what its Python needs at run time, not only what
``ldd`` names: glibc opens ``libgcc_s.so.1`` itself when a thread ends through ``pthread_exit``, which Python's
daemon threads do when the interpreter exits under them. Without it such a workload aborted at random (exit
134, "libgcc_s.so.1 must be installed for pthread_exit to work")."""

from __future__ import annotations

import docker
import pytest
from symbi_fixtures.agent_images import build_agent_image

DAEMONS_AT_EXIT = """
import ctypes, threading, time
ctypes.CDLL("libgcc_s.so.1")  # found where glibc's own dlopen of it looks

def spin():
    while True:
        sum(range(1000))

for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
time.sleep(0.2)
print("done")
"""


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_daemon_threads_running_at_exit_end_cleanly(docker_client: docker.DockerClient, runtime: str) -> None:
    image = build_agent_image()
    for _ in range(3):
        container = docker_client.containers.run(
            image, ["python3", "-c", DAEMONS_AT_EXIT], runtime=runtime, network_mode="none", pids_limit=128, detach=True
        )
        try:
            status = container.wait(timeout=60)
            logs = container.logs().decode()
        finally:
            container.remove(force=True)
        assert (status["StatusCode"], logs) == (0, "done\n")
