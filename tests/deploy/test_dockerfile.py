"""deploy/Dockerfile, built here on a stand-in for python:3.11-slim (deploy/images/dockerfile-proof.sh says how
the stand-in is made and what that does and does not prove), and the image it builds run.

Marked ``deploy`` with the compose tests: a debootstrap the first time, then a ``docker build`` that installs the
workspace from PyPI (a few minutes on two cores).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from symbi_cli.runtime_options import ALL_SERVICES

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    tag = f"symbi-proof/runtime:test-{secrets.token_hex(4)}"
    done = subprocess.run(
        [str(REPO / "deploy/images/dockerfile-proof.sh"), tag], cwd=REPO, capture_output=True, text=True, timeout=1700
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == tag
    try:
        yield tag
    finally:
        docker("rmi", tag)


def test_the_built_image_is_made_from_the_dockerfile_on_the_given_base(image: str) -> None:
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "symbi"
    assert config["Cmd"] == ["symbi", "--help"]
    assert "SYMBI_HTTP_PORT=8080" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD-SHELL"
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "useradd --system --uid 10001 symbi" in history


def test_the_cli_runs_and_every_service_imports(image: str) -> None:
    done = docker("run", "--rm", image)
    assert done.returncode == 0, done.stderr
    assert "Usage: symbi" in done.stdout, done.stdout
    modules = [f"symbi_{s.replace('-', '_')}.main" for s in ALL_SERVICES]
    code = f"import importlib; [importlib.import_module(m) for m in {modules!r}]; print('ok')"
    done = docker("run", "--rm", "--read-only", image, "python", "-c", code)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-3000:]


def test_its_nats_server_starts_and_answers_health(image: str) -> None:
    name = f"symbi-proof-{secrets.token_hex(4)}"
    started = docker("run", "-d", "--name", name, image, "nats-server", "-js", "-sd", "/tmp/js", "-m", "8222")
    assert started.returncode == 0, started.stderr
    try:
        probe = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8222/healthz').read().decode())"
        deadline = time.monotonic() + 60
        while True:
            done = docker("exec", name, "python", "-c", probe)
            if done.returncode == 0:
                break
            assert time.monotonic() < deadline, docker("logs", name).stderr[-3000:]
            time.sleep(1)
        assert json.loads(done.stdout)["status"] == "ok"
    finally:
        docker("rm", "-f", name)
