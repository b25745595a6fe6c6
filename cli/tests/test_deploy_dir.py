"""``symbi deploy init``: the deployment directory docker-compose.yml mounts (symbi_cli.deploy_dir)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from symbi_cli.deploy_dir import (
    ROUTE_PASSWORD_ENV,
    DeployConfig,
    compose_env,
    init_deploy_dir,
    parse_env,
    password_env_name,
)
from symbi_cli.runtime_options import ALL_SERVICES, DATABASE_SERVICES
from symbi_common.natsauth import nats_users

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"runtime": "symbi/runtime:abc", "jaeger": "symbi/jaeger:def", "prometheus": "symbi/prometheus:ghi"}


@pytest.fixture
def deploy_dir(tmp_path: Path) -> Path:
    return tmp_path / "deploy"


def test_each_service_gets_only_its_own_credentials(deploy_dir: Path) -> None:
    init_deploy_dir(deploy_dir, DeployConfig(images=IMAGES), uid=os.getuid())
    passwords = parse_env((deploy_dir / "env" / "nats.env").read_text())
    assert set(passwords) == {password_env_name(u) for u in nats_users()}
    for service in ALL_SERVICES:
        env = parse_env((deploy_dir / "env" / f"{service}.env").read_text())
        assert env["SYMBI_NATS_URL"].startswith(f"tls://{service}:")
        assert passwords[password_env_name(service)] in env["SYMBI_NATS_URL"]
        others = [p for name, p in passwords.items() if name != password_env_name(service)]
        assert not any(p in text for p in others for text in env.values()), f"{service} sees another's password"
        assert ("SYMBI_DATABASE_URL" in env) == (service in DATABASE_SERVICES)
        assert (deploy_dir / "keys" / service / "signing.key").exists()
    assert parse_env((deploy_dir / "env" / "provision.env").read_text())["SYMBI_NATS_URL"].startswith("tls://admin:")
    assert (deploy_dir / "operator" / "root.key").exists()
    for path in [deploy_dir, *deploy_dir.rglob("*")]:
        public = path.suffix in (".pub", ".json", ".sig") or path == deploy_dir / "tls" / "ca.pem"  # a certificate
        if path.is_file() and not public:
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"


def test_the_nats_route_password_is_for_the_nats_servers_only(deploy_dir: Path) -> None:
    """The cluster's route password (Secret symbi-nats-route, deploy/k8s/nats.yaml) is its own file: no
    service's env file nor the users' password file carries it, and a second init keeps it."""
    init_deploy_dir(deploy_dir, DeployConfig(images=IMAGES), uid=os.getuid())
    route_file = deploy_dir / "env" / "nats-route.env"
    route = parse_env(route_file.read_text())
    assert set(route) == {ROUTE_PASSWORD_ENV}
    password = route[ROUTE_PASSWORD_ENV]
    assert password[0].isalpha()
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", password), "not usable as it is in a route URL"
    assert stat.S_IMODE(route_file.stat().st_mode) == 0o600
    others = [p for p in deploy_dir.rglob("*") if p.is_file() and p != route_file]
    assert not [p for p in others if password.encode() in p.read_bytes()], "the route password leaked"
    init_deploy_dir(deploy_dir, DeployConfig(images=IMAGES), uid=os.getuid())
    assert parse_env(route_file.read_text())[ROUTE_PASSWORD_ENV] == password
    other = deploy_dir.parent / "other"
    init_deploy_dir(other, DeployConfig(images=IMAGES), uid=os.getuid())
    assert parse_env((other / "env" / "nats-route.env").read_text())[ROUTE_PASSWORD_ENV] != password


def test_a_second_init_keeps_keys_and_passwords_and_takes_new_image_tags(deploy_dir: Path) -> None:
    init_deploy_dir(deploy_dir, DeployConfig(images=IMAGES), uid=os.getuid())
    before = {p: p.read_bytes() for p in [*deploy_dir.glob("env/*.env"), *deploy_dir.glob("keys/*/signing.key")]}
    pg = (deploy_dir / "postgres" / "password").read_text()
    env_file = init_deploy_dir(
        deploy_dir, DeployConfig(images={**IMAGES, "runtime": "symbi/runtime:new"}), uid=os.getuid()
    )
    assert {p: p.read_bytes() for p in before} == before
    assert (deploy_dir / "postgres" / "password").read_text() == pg
    assert parse_env(env_file.read_text())["SYMBI_RUNTIME_IMAGE"] == "symbi/runtime:new"


def test_compose_env_names_every_variable_docker_compose_yml_requires(deploy_dir: Path) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    with_default = set(re.findall(r"\$\{(\w+):-", text))
    provided = set(compose_env(deploy_dir, DeployConfig(images=IMAGES), "/dev/vda"))
    assert required <= provided, f"compose.env lacks {sorted(required - provided)}"
    assert with_default - provided <= {"SYMBI_HOST_ID"}, sorted(with_default - provided)
    # Every service's published port comes from the config's base port.
    env = compose_env(deploy_dir, DeployConfig(base_port=18000, images=IMAGES))
    assert env["SYMBI_LIFECYCLE_PORT"] == "18001"
    assert env["SYMBI_SANDBOX_AGENT_PORT"] == "18005"
    assert env["SYMBI_DOCKER_DISK"] == "/dev/null"


def test_nats_server_accepts_every_generated_password(tmp_path: Path) -> None:
    """nats-server reads a ``$VAR`` value that starts with '-' as a number and refuses the whole configuration;
    passwords are made so none does (a bare ``token_urlsafe`` did one time in 64 per password). The real
    nats-server checks users.conf with the passwords of 20 deployment directories."""
    nats_server = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert nats_server is not None
    conf = tmp_path / "nats.conf"  # includes are relative to the including file
    shutil.copy(REPO / "deploy" / "nats" / "users.conf", tmp_path / "users.conf")
    conf.write_text('port: -1\ninclude "users.conf"\n')
    for n in range(20):
        directory = tmp_path / f"deploy-{n}"
        init_deploy_dir(directory, DeployConfig(images=IMAGES), uid=os.getuid())
        passwords = parse_env((directory / "env" / "nats.env").read_text())
        assert all(p[0].isalpha() for p in passwords.values()), passwords
        env = dict(os.environ, **passwords)
        done = subprocess.run([nats_server, "-c", str(conf), "-t"], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
