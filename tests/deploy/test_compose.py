"""docker-compose.yml, brought up for real from the images deploy/images/build.sh makes here.

One stack per module (tests/deploy/conftest.py): every service ready through its published port, the main job
run against it with the CLI (agent registration → task in a sandbox on the host's Docker → result → memory →
a verified audit receipt), the event log verified event by event, Prometheus scraping every service, Jaeger
holding the task's trace, and ``down -v`` leaving no container, volume or network behind. Marked ``deploy``:
not part of a plain ``pytest`` run (see the conftest for how to run it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from symbi_cli.runtime_options import ALL_SERVICES, SERVICE_PORT_OFFSETS

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
#: Published ports above the service block: NATS, Jaeger's query API, Prometheus.
NATS_OFFSET, JAEGER_OFFSET, PROMETHEUS_OFFSET = 7, 8, 9
READY_TIMEOUT_S = 600.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_block(size: int) -> int:
    """A base port with base + 1 … base + size free, below the ephemeral range."""
    for _ in range(500):
        base = random.randrange(20_000, 32_000 - size)
        if all(_port_free(base + offset) for offset in range(1, size + 1)):
            return base
    raise RuntimeError("no free block of ports between 20000 and 32000")


#: The compose implementations the stack is brought up with (each runs the whole module once):
#: Docker Compose v5.6.0 built from the Go module proxy, and Debian's docker-compose 1.29.2.
COMPOSES = ("compose-v5", "docker-compose")


def compose_command(implementation: str) -> list[str]:
    if implementation == "compose-v5":
        done = subprocess.run(
            [str(REPO / "deploy/host/tools.sh"), "--print", "compose-v5"], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail("Docker Compose v5 is not built: run deploy/host/tools.sh compose-v5")
        return [done.stdout.strip()]
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: run deploy/host/tools.sh compose")
    return [exe]


@dataclass
class Stack:
    """A running compose project: where its directory is, how to reach it, how to run compose on it."""

    project: str
    command: list[str]
    directory: Path
    base_port: int
    images: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.command, "-p", self.project, "--env-file", str(self.directory / "compose.env"), *args]
        done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}")
        return done

    def url(self, service: str) -> str:
        """The service's API through its published port: HTTPS only (deploy_tls), checked against :attr:`ca`."""
        return f"https://127.0.0.1:{self.base_port + SERVICE_PORT_OFFSETS[service]}"

    @property
    def ca(self) -> ssl.SSLContext:
        """Trusts the deployment's CA only."""
        return ssl.create_default_context(cafile=str(self.directory / "tls" / "ca.pem"))

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port + PROMETHEUS_OFFSET}"

    @property
    def jaeger_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port + JAEGER_OFFSET}"

    def symbi(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).parent / "symbi"
        return subprocess.run(
            [str(exe), *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def statuses(self, service: str = "") -> list[str]:
        """``docker ps -a`` statuses of the project's containers (of ``service``): the same whichever compose
        made them, as both label what they create."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        cmd = ["docker", "ps", "-a", *filters, "--format", "{{.Status}}"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, cmd in {
            "containers": ["docker", "ps", "-aq", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
        }.items():
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            found[kind] = out
        return found

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", check=False).stdout[-8000:]


def build_images() -> dict[str, str]:
    done = subprocess.run(
        [str(REPO / "deploy/images/build.sh"), "--env"], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        pytest.fail(f"deploy/images/build.sh failed: {done.stderr[-3000:]}")
    images = dict(line.split("=", 1) for line in done.stdout.split())
    expected = {"SYMBI_RUNTIME_IMAGE", "SYMBI_JAEGER_IMAGE", "SYMBI_PROMETHEUS_IMAGE", "SYMBI_AGENT_IMAGE"}
    assert set(images) == expected, done.stdout
    return images


def wait_ready(stack: Stack, timeout: float = READY_TIMEOUT_S) -> dict[str, float]:
    """Seconds until each service's /readyz answered 200 (through its published port)."""
    started = time.monotonic()
    ready: dict[str, float] = {}
    with httpx.Client(timeout=3.0, verify=stack.ca) as http:
        while len(ready) < len(ALL_SERVICES):
            for service in ALL_SERVICES:
                if service in ready:
                    continue
                try:
                    if http.get(f"{stack.url(service)}/readyz").status_code == 200:
                        ready[service] = time.monotonic() - started
                except httpx.HTTPError:
                    pass
            if time.monotonic() - started > timeout:
                missing = sorted(set(ALL_SERVICES) - set(ready))
                pytest.fail(f"not ready within {timeout:.0f} s: {missing}\n{stack.logs()}")
            time.sleep(1.0)
    return ready


@pytest.fixture(scope="module", params=COMPOSES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole compose stack on free loopback ports, ready; ``down -v`` afterwards whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("the compose tests need root (key directories are handed to the containers' uid)")
    images = build_images()
    base = free_block(PROMETHEUS_OFFSET)
    project = f"symbitest{secrets.token_hex(4)}"
    directory = tmp_path_factory.mktemp("compose") / "deploy"
    env = {k: v for k, v in os.environ.items() if k not in ("SYMBI_HOME", "SYMBI_KEYS_DIR", "SYMBI_NATS_URL")}
    env.update({"COLUMNS": "200", "SYMBI_HOST_ID": project, "SYMBI_HOME": str(directory)})
    command = compose_command(request.param)
    stack = Stack(project=project, command=command, directory=directory, base_port=base, images=images, env=env)
    init = stack.symbi(
        "deploy", "init", str(directory), "--images", "\n".join(f"{k}={v}" for k, v in images.items()),
        "--base-port", str(base), "--nats-port", str(base + NATS_OFFSET),
        "--jaeger-port", str(base + JAEGER_OFFSET), "--prometheus-port", str(base + PROMETHEUS_OFFSET),
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    try:
        started = time.monotonic()
        stack.compose("up", "-d", timeout=READY_TIMEOUT_S)
        stack.env["SYMBI_TEST_READY"] = json.dumps(wait_ready(stack))
        stack.env["SYMBI_TEST_UP_S"] = f"{time.monotonic() - started:.1f}"
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)


HELLO = REPO / "examples" / "agents" / "hello.symbi"
#: Documented metrics (docs/observability.md), each with a service that must export it.
DOCUMENTED_METRICS = {
    "symbi_agents": "lifecycle",
    "symbi_agent_initializations_total": "lifecycle",
    "symbi_policy_version": "policy",
    "symbi_policy_decisions_total": "scheduler",
    "symbi_commands_total": "lifecycle",
    "symbi_events_appended_total": "sandbox-agent",
    "symbi_audit_tree_size": "audit",
    "symbi_audit_events_total": "audit",
    "symbi_context_operations_total": "context",
}


def _run_main_job(stack: Stack, name: str, agent: Path = HELLO) -> dict[str, Any]:
    done = stack.symbi(
        "run", str(agent), "--input", name, "--home", str(stack.directory),
        "--base-port", str(stack.base_port), "--json",
    )  # fmt: skip
    assert done.returncode == 0, f"symbi run exited {done.returncode}: {done.stderr[-3000:]}\n{stack.logs()}"
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.fixture(scope="module")
def main_job(stack: Stack) -> dict[str, Any]:
    return _run_main_job(stack, "compose")


def test_every_service_is_ready_in_its_container(stack: Stack) -> None:
    ready = json.loads(stack.env["SYMBI_TEST_READY"])
    assert sorted(ready) == sorted(ALL_SERVICES)
    print(f"up -d and every /readyz green in {stack.env['SYMBI_TEST_UP_S']} s: {ready}")
    print(stack.compose("version").stdout.strip())
    statuses = stack.statuses()
    assert len(statuses) == 12, statuses  # nats, postgres, jaeger, prometheus, provision, six services, policy-2
    assert [s.split(" (")[0] for s in stack.statuses("provision")] == ["Exited"], stack.statuses("provision")
    assert stack.statuses("provision")[0].startswith("Exited (0)")


def test_every_api_answers_over_https_with_the_deployments_ca_only(stack: Stack) -> None:
    """No API answers in clear, and none shows a certificate the system's roots would take for it: only the
    deployment's CA vouches for them (the CLI with ``--home DIR`` trusts exactly that one)."""
    for service in ALL_SERVICES:
        port = stack.base_port + SERVICE_PORT_OFFSETS[service]
        assert httpx.get(f"{stack.url(service)}/healthz", verify=stack.ca, timeout=10).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{stack.url(service)}/healthz", timeout=10)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # a clear request: the connection closes
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)


#: What the runtime image installs from the workspace: every member's package, as in the checkout.
WORKSPACE_PACKAGES = sorted(
    p for pattern in ("libs/*/src/*", "services/*/src/*", "cli/src/*", "sdk/python/src/*") for p in REPO.glob(pattern)
)
IMAGE_DIGESTS = """
import hashlib, importlib, json, pathlib, sys
out = {}
for name in sys.argv[1:]:
    root = pathlib.Path(importlib.import_module(name).__file__).parent
    for path in root.rglob("*.py"):
        out[f"{name}/{path.relative_to(root)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
print(json.dumps(out))
"""


def test_the_runtime_image_holds_the_sources_of_this_checkout(stack: Stack) -> None:
    """File for file, the image's packages are the checkout's: a source change alone must reach the image (uv
    hands back a local package's earlier wheel unless build.sh has it rebuilt)."""
    names = [p.name for p in WORKSPACE_PACKAGES]
    cmd = ["docker", "run", "--rm", stack.images["SYMBI_RUNTIME_IMAGE"], "python", "-c", IMAGE_DIGESTS, *names]
    in_image = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout)
    here = {
        f"{package.name}/{path.relative_to(package)}": hashlib.sha256(path.read_bytes()).hexdigest()
        for package in WORKSPACE_PACKAGES
        for path in package.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert len(here) > 300
    stale = sorted(name for name in here if in_image.get(name) != here[name])
    assert not stale, f"the image's copies differ from the checkout: {stale[:10]}"


def test_the_main_job_runs_end_to_end_with_a_verified_receipt(main_job: dict[str, Any]) -> None:
    assert main_job["agent"]["state"] == "Ready"
    task = main_job["task"]
    assert (task["status"], task["outcome"], task["tier"]) == ("completed", "succeeded", "tier1")
    assert main_job["result"].strip() == "hello compose"
    assert main_job["memory"], "the result was not stored as the agent's memory"
    receipt = main_job["receipt"]
    assert receipt["verified"] is True
    types = [e["event_type"] for e in receipt["events"]]
    assert types[0] == "task.submitted", types
    assert "task.completed" in types, types
    assert all(e["leaf_index"] < receipt["checkpoint"]["size"] for e in receipt["events"])


def test_a_tier2_task_runs_in_gvisor_from_the_containerised_sandbox_agent(stack: Stack) -> None:
    text = "one two three\nfour five\n"
    doc = _run_main_job(stack, text, REPO / "examples" / "agents" / "text-stats.symbi")
    assert (doc["task"]["outcome"], doc["task"]["tier"]) == ("succeeded", "tier2")
    stats = json.loads(doc["result"])
    assert (stats["lines"], stats["words"], stats["bytes"]) == (2, 5, len(text.encode()))
    assert stats["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert doc["receipt"]["verified"] is True


#: An agent written with the SDK: it stores a memory through its host and recalls it (the sandbox-agent in its
#: container forwards both to the context service).
SDK_AGENT = """\
import json, os
from symbi_agent import Agent
name = open(os.environ["SYMBI_INPUT"]).read().strip()
with Agent() as a:
    stored = a.memory.store("deployed for " + name, collection="notes")
    found = a.memory.recall("deployed", collection="notes")["memories"]
print(json.dumps({"stored": stored["memory_id"], "recalled": [m["id"] for m in found]}))
"""


def test_an_sdk_agent_runs_in_the_agent_image_built_for_the_stack(stack: Stack, tmp_path: Path) -> None:
    image = stack.images["SYMBI_AGENT_IMAGE"]
    assert (stack.directory / "compose.env").read_text().count(f"SYMBI_AGENT_IMAGE={image}") == 1
    definition = json.loads((REPO / "examples" / "agents" / "hello.json").read_text())
    definition.update(name="sdk-agent", description="Stores and recalls a memory with the agent SDK.")
    definition["workload"] = {"image": image, "command": ["python3", "-c", SDK_AGENT], "actions": True}
    path = tmp_path / "sdk-agent.json"
    path.write_text(json.dumps(definition))
    doc = _run_main_job(stack, "compose", path)
    assert (doc["task"]["outcome"], doc["receipt"]["verified"]) == ("succeeded", True), doc["task"]
    out = json.loads(doc["result"])
    assert out["recalled"] == [out["stored"]], out


#: The deployment's grant: any agent may have the one test secret (the baseline permits no secret.read).
SECRET_GRANT = """
@id("compose-secret")
permit(principal is Agent, action == Action::"secret.read", resource == Secret::"compose/token");
"""
READ_SECRET = "import hashlib; print(hashlib.sha256(open('/symbi/secrets/compose/token', 'rb').read()).hexdigest())"


def test_a_secret_reaches_a_sandbox_of_the_containerised_sandbox_agent(stack: Stack, tmp_path: Path) -> None:
    """The sandbox-agent writes the file in its container; the host's engine binds it into the sandbox, so the
    secrets root must be the host's (/dev/shm/symbi-secrets on both sides), not the container's own /dev/shm."""
    value = secrets.token_hex(16).encode()
    exe = Path(sys.executable).parent / "symbi"
    put = subprocess.run(
        [str(exe), "secrets", "set", "compose/token", "--home", str(stack.directory)],
        input=value, env=stack.env, capture_output=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr[-2000:]
    token = (stack.directory / "operator.token").read_text().strip()
    grant = {"set_id": "compose-secret", "cedar": SECRET_GRANT}
    answer = httpx.post(
        f"{stack.url('policy')}/v1/policy-sets", json=grant, headers={"Authorization": f"Bearer {token}"}, timeout=30,
        verify=stack.ca,
    )  # fmt: skip
    assert answer.status_code in (200, 201), answer.text
    definition = json.loads((REPO / "examples" / "agents" / "hello.json").read_text())
    definition.update(name="secret-reader", description="Prints the SHA-256 of its secret file.")
    definition["secrets"] = ["vault://compose/token"]
    image = stack.images["SYMBI_AGENT_IMAGE"]
    definition["workload"] = {"image": image, "command": ["python3", "-c", READ_SECRET]}
    path = tmp_path / "secret-reader.json"
    path.write_text(json.dumps(definition))
    doc = _run_main_job(stack, "compose", path)
    assert doc["task"]["outcome"] == "succeeded", doc["task"]
    assert doc["result"].strip() == hashlib.sha256(value).hexdigest()
    assert value.decode() not in json.dumps(doc)


def test_every_stored_event_verifies_against_the_deployment_keyring(stack: Stack, main_job: dict[str, Any]) -> None:
    done = stack.symbi("events", "tail", "--json", "--home", str(stack.directory))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    task_id = main_job["task"]["task_id"]
    assert all(line["verified"] for line in lines)
    assert any(task_id in line["subject"] for line in lines), "the task's events are not in the stream"


def _prometheus(http: httpx.Client, path: str, **params: str) -> Any:
    body = http.get(path, params=params).json()
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_every_service_and_the_documented_metrics(stack: Stack, main_job: dict[str, Any]) -> None:
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=stack.prometheus_url, timeout=10) as http:
        while True:
            targets = _prometheus(http, "/api/v1/targets")["activeTargets"]
            health = {t["labels"]["service"]: t["health"] for t in targets}
            missing = {
                metric: service
                for metric, service in DOCUMENTED_METRICS.items()
                if not _prometheus(http, "/api/v1/query", query=f'{metric}{{service="{service}"}}')["result"]
            }
            if all(health.get(s) == "up" for s in ALL_SERVICES) and not missing:
                break
            assert time.monotonic() < deadline, f"targets {health}; series missing: {missing}"
            time.sleep(2)
    assert sorted(health) == sorted(ALL_SERVICES)


def test_every_dashboard_query_evaluates_in_prometheus(stack: Stack, main_job: dict[str, Any]) -> None:
    exprs = [
        target["expr"]
        for path in sorted((REPO / "deploy" / "dashboards").glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]
    assert exprs
    with httpx.Client(base_url=stack.prometheus_url, timeout=10) as http:
        answered = {expr: _prometheus(http, "/api/v1/query", query=expr)["result"] for expr in exprs}
    empty = [expr for expr, result in answered.items() if not result]
    # Counters of things that did not happen (audit findings, rejected events …) have no series yet.
    assert len(empty) <= len(exprs) // 2, f"no data for {empty}"


def test_jaeger_holds_the_tasks_trace_across_every_service(stack: Stack, main_job: dict[str, Any]) -> None:
    trace_id = main_job["trace_id"]
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=stack.jaeger_url, timeout=10) as http:
        while True:
            response = http.get(f"/api/traces/{trace_id}")
            data = response.json().get("data") or [] if response.status_code == 200 else []
            services = {p["serviceName"] for t in data for p in t["processes"].values()}
            if {f"symbi-{s}" for s in ALL_SERVICES} <= services:
                break
            assert time.monotonic() < deadline, f"trace {trace_id}: services {sorted(services)}"
            time.sleep(2)
    assert len(data) == 1


def test_with_one_policy_replica_killed_the_main_job_still_runs(stack: Stack, main_job: dict[str, Any]) -> None:
    stack.compose("kill", "policy")
    assert stack.statuses("policy")[0].startswith("Exited"), stack.statuses("policy")
    assert stack.statuses("policy-2")[0].startswith("Up"), stack.statuses("policy-2")
    again = _run_main_job(stack, "replica")
    assert again["task"]["outcome"] == "succeeded"
    assert again["result"].strip() == "hello replica"
    assert again["receipt"]["verified"] is True


#: Run in the lifecycle's container with its own environment: what its database login may and may not do.
DB_PROBE = """
import asyncio, json, os, asyncpg
from urllib.parse import urlsplit, urlunsplit
async def main():
    url = os.environ["SYMBI_DATABASE_URL"]
    out = {}
    conn = await asyncpg.connect(url)
    out["user"] = await conn.fetchval("SELECT current_user")
    out["superuser"] = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    out["tables_owned_by"] = sorted({r[0] for r in await conn.fetch("SELECT tableowner FROM pg_tables"
                                                                     " WHERE schemaname = 'lifecycle'")})
    try:
        await conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        out["copy_to_program"] = "ran"
    except asyncpg.PostgresError as exc:
        out["copy_to_program"] = type(exc).__name__
    await conn.close()
    parts = urlsplit(url)
    superuser = f"postgres:{os.environ['PG_SUPERUSER_PASSWORD']}@{parts.hostname}:{parts.port}"
    for name, other in {"audit_database": parts._replace(path="/symbi_audit"),
                        "as_superuser": parts._replace(netloc=superuser)}.items():
        try:
            await (await asyncpg.connect(urlunsplit(other))).close()
            out[name] = "connected"
        except asyncpg.PostgresError as exc:
            out[name] = type(exc).__name__
    print(json.dumps(out))
asyncio.run(main())
"""


def test_the_lifecycle_reaches_postgres_as_its_own_role_and_only_its_database(stack: Stack) -> None:
    """From the lifecycle's container, with its env file's URL: its own unprivileged role, owner of its read
    model; no way into the audit database, no programs on the database host, no superuser login over the
    network even with the superuser's password."""
    password = (stack.directory / "postgres" / "password").read_text().strip()
    assert password not in (stack.directory / "env" / "lifecycle.env").read_text()
    done = stack.compose("exec", "-T", "-e", f"PG_SUPERUSER_PASSWORD={password}", "lifecycle", "python", "-c", DB_PROBE)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe == {
        "user": "symbi_lifecycle",
        "superuser": False,
        "tables_owned_by": ["symbi_lifecycle"],
        "copy_to_program": "InsufficientPrivilegeError",
        "audit_database": "InsufficientPrivilegeError",
        "as_superuser": "InvalidAuthorizationSpecificationError",
    }, probe


def test_down_removes_everything(stack: Stack, main_job: dict[str, Any]) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
    # Only the deployment directory stays (the operator's keys and credentials), as docs/security.md says.
    assert (stack.directory / "operator").is_dir()
    # The sandbox-agent's work root keeps its per-host directory, but no task's files.
    assert not [p for p in Path(stack.directory / "work").rglob("*") if not p.is_dir()]
