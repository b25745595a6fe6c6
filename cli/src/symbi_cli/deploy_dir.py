"""The deployment directory the compose stack mounts: keys, credentials and configuration, one part per service.

``symbi deploy init DIR`` writes (idempotently: existing keys and passwords are kept)::

    DIR/keys/<service>/        each service's keys, root.pub and the signed registry (mounted read-only as /keys)
    DIR/keys/                  the whole keyring: the provisioning job and the operator's CLI only
    DIR/operator/              the root key, the operator-token issuer key and the TLS CA's key: mounted into no
                               container
    DIR/tls/<party>/           ca.pem, cert.pem, key.pem: nats-server's and each NATS client's own certificate,
                               mounted as /tls by that container only (:mod:`symbi_cli.deploy_tls`)
    DIR/env/<service>.env      that service's NATS user and password, and its database URL (env_file)
    DIR/env/nats.env           every NATS user's password, for nats-server's users.conf ($NATS_<USER>_PASSWORD)
    DIR/env/nats-route.env     the NATS cluster's route password ($NATS_ROUTE_PASSWORD), for the NATS servers
                               only: a server joins the cluster as a route only with it (deploy/k8s/nats.yaml)
    DIR/env/provision.env      the admin and operator NATS URLs, for the provisioning job only
    DIR/postgres/password      the PostgreSQL superuser's password (initdb --pwfile): the postgres container only
    DIR/postgres/<role>.password  each database service's login role's password (symbi_lifecycle, symbi_audit),
                               for the postgres container, which sets it (``symbi deploy postgres-roles``)
    DIR/operator.token         an admin operator token for the CLI (``--home DIR``)
    DIR/run/nats-operator.url  the operator's NATS URL as seen from the host, with the operator's TLS files
    DIR/compose.env            ``docker-compose --env-file``: the directory, published ports and image tags

It is the compose counterpart of what ``symbi up`` provisions for its processes (:mod:`symbi_cli.runtime`):
the same keyring, one least-privilege NATS user per service, a database per service that keeps one, owned
by that service's own login role (no service gets the PostgreSQL superuser's password).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from symbi_common.block_devices import block_device_of
from symbi_common.nats_client import with_credentials
from symbi_common.natsauth import ADMIN, OPERATOR, nats_users

from symbi_cli.credentials import write_local_token
from symbi_cli.deploy_tls import ensure_tls, party_files
from symbi_cli.keys import ensure_keyring
from symbi_cli.postgres_roles import new_password, read_password
from symbi_cli.private_files import private_dir
from symbi_cli.runtime_options import ALL_SERVICES, DATABASE_SERVICES, SERVICE_PORT_OFFSETS, database_name

#: The uid the service containers run as (deploy/images/build.sh): owner of what they must read.
SERVICE_UID = 10001
#: Inside the compose network (and the Kubernetes namespace): mutual TLS only (deploy_tls).
NATS_URL = "tls://nats:4222"
#: Where each container mounts its own party's TLS directory (``DIR/tls/<party>``).
TLS_MOUNT = "/tls"
#: The ``[nats]`` TLS settings of a container, from the files of its mounted TLS directory.
CONTAINER_TLS_ENV: Mapping[str, str] = {
    "SYMBI_NATS_TLS_CA": f"{TLS_MOUNT}/ca.pem",
    "SYMBI_NATS_TLS_CERT": f"{TLS_MOUNT}/cert.pem",
    "SYMBI_NATS_TLS_KEY": f"{TLS_MOUNT}/key.pem",
}
POSTGRES_HOST = "postgres:5432"


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """What a deployment directory is made for: published ports and the image tags to run."""

    base_port: int = 8080
    nats_port: int = 4222
    jaeger_port: int = 16686
    prometheus_port: int = 9090
    images: Mapping[str, str] = field(default_factory=dict)
    #: The Docker engine's data root (``docker info``'s DockerRootDir): the sandbox-agent finds the disk
    #: behind it to enforce sandboxes' disk IO limits.
    docker_root: str = "/var/lib/docker"


#: The variable deploy/k8s/nats.yaml reads the cluster's route password from.
ROUTE_PASSWORD_ENV = "NATS_ROUTE_PASSWORD"  # noqa: S105 - a variable name, not a password


def password_env_name(user: str) -> str:
    """``$NATS_<USER>_PASSWORD``, the variable deploy/nats/users.conf reads for ``user``."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


def env_text(values: Mapping[str, str]) -> str:
    """An env file; values must be single-line (compose takes everything after ``=`` literally)."""
    for key, value in values.items():
        if "\n" in value or "\n" in key:
            raise ValueError(f"{key}: an env file value must be one line")
    return "".join(f"{key}={value}\n" for key, value in values.items())


def parse_env(text: str) -> dict[str, str]:
    """The ``KEY=value`` lines of an env file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value
    return out


def service_env(service: str, passwords: Mapping[str, str], db_passwords: Mapping[str, str]) -> dict[str, str]:
    """One service's credentials: its own NATS user, and its own database's login role if it keeps one.

    ``db_passwords`` maps each database service's role (:func:`database_name`) to its password.
    """
    env = {"SYMBI_NATS_URL": with_credentials(NATS_URL, service, passwords[service]), **CONTAINER_TLS_ENV}
    if service in DATABASE_SERVICES:
        role = database_name(service)
        env["SYMBI_DATABASE_URL"] = f"postgresql://{role}:{db_passwords[role]}@{POSTGRES_HOST}/{role}"
    return env


def url_with_tls(url: str, ca: str, cert: str, key: str) -> str:
    """``url`` carrying its client's TLS files as query parameters (:func:`symbi_common.nats_client.server_options`)."""
    return f"{url}?{urlencode({'tls_ca': ca, 'tls_cert': cert, 'tls_key': key})}"


def role_password_file(directory: Path, role: str) -> Path:
    """Where the deployment directory keeps the password of database role ``role``."""
    return directory / "postgres" / f"{role}.password"


def compose_env(directory: Path, config: DeployConfig, docker_disk: str | None = None) -> dict[str, str]:
    """The variables docker-compose.yml interpolates: where the directory is, ports, images, Docker's disk.

    With no disk behind Docker's data root, ``/dev/null`` stands in (the sandbox-agent then refuses tasks
    that ask for a disk IO limit, as it would on the host).
    """
    env = {
        "SYMBI_DEPLOY_DIR": str(directory),
        "SYMBI_DOCKER_ROOT": config.docker_root,
        "SYMBI_DOCKER_DISK": docker_disk or "/dev/null",
        "SYMBI_NATS_PORT": str(config.nats_port),
        "SYMBI_JAEGER_PORT": str(config.jaeger_port),
        "SYMBI_PROMETHEUS_PORT": str(config.prometheus_port),
    }
    for service in ALL_SERVICES:
        env[f"SYMBI_{service.upper().replace('-', '_')}_PORT"] = str(config.base_port + SERVICE_PORT_OFFSETS[service])
    for name, tag in sorted(config.images.items()):
        env[f"SYMBI_{name.upper()}_IMAGE"] = tag
    return env


def _write(path: Path, text: str, *, mode: int = 0o600, uid: int | None = None) -> None:
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    if uid is not None:
        os.chown(tmp, uid, uid)
    os.replace(tmp, path)


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, uid)


def _read_passwords(path: Path) -> dict[str, str]:
    try:
        by_var = parse_env(path.read_text())
    except FileNotFoundError:
        return {}
    return {user: by_var[password_env_name(user)] for user in nats_users() if password_env_name(user) in by_var}


def _new_nats_password() -> str:
    # A leading letter: nats-server reads `$VAR` values that start with '-' as numbers and refuses the
    # configuration ("Expected a digit"), which a bare token_urlsafe does one time in 64. URL-safe characters
    # only: the route password also goes into the route URLs as it is.
    return "p" + secrets.token_urlsafe(24)


def init_deploy_dir(directory: Path, config: DeployConfig, *, uid: int = SERVICE_UID) -> Path:
    """Create or complete ``directory`` for the compose stack; returns its ``compose.env``.

    Keys and passwords already there are kept, so running it again (e.g. with new image tags) changes
    nothing a running stack depends on. Needs root when ``uid`` is not the caller's (the key directories
    are handed to the containers' user).
    """
    # Containers get single files and directories bind-mounted: their user needs rights on those only.
    directory = private_dir(directory.resolve())
    keys, operator = directory / "keys", directory / "operator"
    ensure_keyring(keys, operator)
    for service in ALL_SERVICES:
        _chown_tree(keys / service, uid)
    ensure_tls(directory, uid=uid)

    nats_env = directory / "env" / "nats.env"
    passwords = _read_passwords(nats_env)
    for user in nats_users():
        passwords.setdefault(user, _new_nats_password())
    route_env = directory / "env" / "nats-route.env"
    route_password = parse_env(route_env.read_text()).get(ROUTE_PASSWORD_ENV) if route_env.exists() else None
    pg_file = directory / "postgres" / "password"
    pg_password = pg_file.read_text().strip() if pg_file.exists() else new_password()
    db_passwords = {}
    for role in sorted(database_name(s) for s in DATABASE_SERVICES):
        path = role_password_file(directory, role)
        db_passwords[role] = read_password(path) if path.exists() else new_password()

    _write(nats_env, env_text({password_env_name(u): passwords[u] for u in nats_users()}))
    _write(route_env, env_text({ROUTE_PASSWORD_ENV: route_password or _new_nats_password()}))
    for service in ALL_SERVICES:
        _write(directory / "env" / f"{service}.env", env_text(service_env(service, passwords, db_passwords)))
    _write(
        directory / "env" / "provision.env",
        env_text(
            {
                "SYMBI_NATS_URL": with_credentials(NATS_URL, ADMIN, passwords[ADMIN]),
                **CONTAINER_TLS_ENV,
                # `symbi keys publish` reads no settings: its URL carries the same files. The job's certificate is
                # the admin's (nats-server maps it to that user), which may publish registry versions too.
                "SYMBI_OPERATOR_NATS_URL": url_with_tls(
                    with_credentials(NATS_URL, ADMIN, passwords[ADMIN]), *CONTAINER_TLS_ENV.values()
                ),
            }
        ),
    )
    _write(pg_file, pg_password + "\n", mode=0o400, uid=uid)
    for role, password in db_passwords.items():
        _write(role_password_file(directory, role), password + "\n", mode=0o400, uid=uid)
    write_local_token(directory, keys)
    host_nats = with_credentials(f"tls://127.0.0.1:{config.nats_port}", OPERATOR, passwords[OPERATOR])
    mine = party_files(directory, OPERATOR)
    _write(
        directory / "run" / "nats-operator.url",
        url_with_tls(host_nats, str(mine.ca), str(mine.cert), str(mine.key)) + "\n",
    )
    for shared in ("work", "vectors"):
        (directory / shared).mkdir(exist_ok=True)
    _chown_tree(directory / "vectors", uid)
    env_file = directory / "compose.env"
    _write(env_file, env_text(compose_env(directory, config, block_device_of(config.docker_root))))
    return env_file
