"""``symbi deploy``: the deployment directory the compose stack mounts (:mod:`symbi_cli.deploy_dir`), and the
database services' PostgreSQL roles the deployment's postgres container sets up (deploy/postgres/start.sh)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from symbi_common.errors import KeyringError

from symbi_cli.deploy_dir import SERVICE_UID, DeployConfig, init_deploy_dir, parse_env
from symbi_cli.deploy_k8s import NAMESPACE, k8s_secrets
from symbi_cli.deploy_tls import CA_CERT_FILE, parties_due
from symbi_cli.errors import CliError, InfraError
from symbi_cli.postgres_roles import ensure_service_database, read_password
from symbi_cli.runtime_options import DATABASE_SERVICES, database_name

#: The compose services that load each party's TLS certificate (docker-compose.yml); the provisioning job
#: and the operator's CLI load theirs afresh on each run.
COMPOSE_SERVICES_OF = {"policy": ("policy", "policy-2"), "provision": (), "operator": ()}

deploy_app = typer.Typer(help="Deployment: the keys, credentials and settings the compose stack mounts.")


def parse_images(text: str) -> dict[str, str]:
    """``SYMBI_<NAME>_IMAGE=<tag>`` lines (what ``deploy/images/build.sh --env`` prints) → name → tag."""
    images: dict[str, str] = {}
    for key, value in parse_env(text).items():
        if not (key.startswith("SYMBI_") and key.endswith("_IMAGE")) or not value.strip():
            raise typer.BadParameter(f"{key!r}: expected SYMBI_<NAME>_IMAGE=<tag> lines")
        images[key.removeprefix("SYMBI_").removesuffix("_IMAGE").lower()] = value.strip()
    return images


@deploy_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="The deployment directory (created 0700).")],
    images: Annotated[
        str, typer.Option("--images", help="SYMBI_<NAME>_IMAGE=<tag> lines, as `deploy/images/build.sh --env` prints.")
    ] = "",
    base_port: Annotated[int, typer.Option("--base-port", help="Published service ports are base+1 … base+6.")] = 8080,
    nats_port: Annotated[int, typer.Option("--nats-port", help="Published NATS client port.")] = 4222,
    jaeger_port: Annotated[int, typer.Option("--jaeger-port", help="Published Jaeger UI/query port.")] = 16686,
    prometheus_port: Annotated[int, typer.Option("--prometheus-port", help="Published Prometheus port.")] = 9090,
    docker_root: Annotated[
        str, typer.Option("--docker-root", help="The engine's data root (`docker info -f '{{.DockerRootDir}}'`).")
    ] = "/var/lib/docker",
    uid: Annotated[int, typer.Option("--uid", help="The uid the service containers run as.")] = SERVICE_UID,
) -> None:
    """Create or complete the deployment directory: keyring, per-service credentials, compose.env.

    Existing keys and passwords are kept, and TLS certificates while they are good (one ending within 30 days
    is issued again: restart what uses it). Then: ``docker-compose --env-file DIR/compose.env up -d``.
    """
    config = DeployConfig(
        base_port=base_port,
        nats_port=nats_port,
        jaeger_port=jaeger_port,
        prometheus_port=prometheus_port,
        images=parse_images(images),
        docker_root=docker_root,
    )
    renewing = (directory / CA_CERT_FILE).exists()
    try:
        due = parties_due(directory) if renewing else []
        env_file = init_deploy_dir(directory, config, uid=uid)
    except (OSError, KeyringError, InfraError, CliError) as exc:
        Console(stderr=True).print(f"[red]error:[/] cannot prepare {directory}: {exc}")
        raise typer.Exit(1) from None
    restart = [name for party in due for name in COMPOSE_SERVICES_OF.get(party, (party,))]
    if restart:  # running containers keep the certificates they loaded
        Console(stderr=True).print(
            f"new TLS certificates for: {', '.join(due)}; restart what uses them — compose: `deploy/compose.sh"
            f" restart {' '.join(restart)}`; Kubernetes: `symbi deploy k8s-secrets DIR | kubectl apply -f -`, then"
            " restart those pods"
        )
    print(env_file)


@deploy_app.command("k8s-secrets")
def k8s_secrets_cmd(
    directory: Annotated[Path, typer.Argument(help="The deployment directory `symbi deploy init` wrote.")],
    namespace: Annotated[str, typer.Option("--namespace", help="The namespace of deploy/k8s.")] = NAMESPACE,
) -> None:
    """Print every Secret deploy/k8s mounts, made from DIR, as one JSON v1/List: pipe it to `kubectl apply -f -`.

    Each Secret holds one party's part of the directory only; nothing of DIR/operator/ goes into any.
    """
    try:
        secrets = k8s_secrets(directory.resolve(), namespace)
    except (OSError, CliError) as exc:
        Console(stderr=True).print(f"[red]error:[/] cannot read {directory}: {exc}")
        raise typer.Exit(1) from None
    print(json.dumps(secrets, indent=1))


@deploy_app.command("postgres-roles")
def postgres_roles(
    admin_url: Annotated[
        str, typer.Option("--admin-url", help="The PostgreSQL superuser's URL (the server's own socket).")
    ],
    passwords: Annotated[
        Path, typer.Option("--passwords", help="The directory with one <role>.password file per database service.")
    ],
) -> None:
    """Create or update each database service's login role and its own database (idempotent).

    Each role (``symbi_lifecycle``, ``symbi_audit``) may only log in, with the password of its file (an
    existing role's is reset to it), and owns its database, which no other role may connect to. Run by
    deploy/postgres/start.sh on every start of the deployment's PostgreSQL, before it listens on the network.
    """
    for role in sorted(database_name(s) for s in DATABASE_SERVICES):
        try:
            password = read_password(passwords / f"{role}.password")
            asyncio.run(ensure_service_database(admin_url, role, password))
        except (OSError, InfraError, asyncpg.PostgresError) as exc:
            Console(stderr=True).print(f"[red]error:[/] role and database {role}: {exc}")
            raise typer.Exit(1) from None
        print(f"role and database {role}: ready")
