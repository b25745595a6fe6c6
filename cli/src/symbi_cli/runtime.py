"""The local runtime: keyring, nats-server, PostgreSQL and every built service, each in its own process.

``symbi up`` and ``symbi demo`` both run a :class:`LocalRuntime`; tests drive it the same way::

    async with LocalRuntime(RuntimeOptions(home=tmp)) as rt:
        await rt.wait_ready()
        ...

Start order: keyring → nats-server → the services that keep no database (policy first) under a
:class:`~symbi_cli.supervisor.Supervisor`, which boot while PostgreSQL (or ``SYMBI_DATABASE_URL``) starts → one
login role and database per service that keeps one (the services never get the superuser's credentials) → those
services, under the same supervisor. Stop order is the reverse, and
``stop`` tears down whatever part of that did start, so a failed or interrupted start leaves nothing
running. A state file (``<home>/run/state.json``) records the pids while the runtime is up; it also
stops a second ``symbi up`` on the same home.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import asyncpg
from symbi_common.errors import ConfigError, InfrastructureError, KeyringError
from symbi_common.nats_client import with_credentials, without_credentials
from symbi_common.natsauth import ADMIN, OPERATOR, authorization_config, nats_users
from symbi_common.settings import load_settings
from symbi_common.streams import StreamSettings

from symbi_cli.agent_image import configured_agent_image, ensure_agent_image
from symbi_cli.credentials import write_local_token
from symbi_cli.errors import InfraError, StartError
from symbi_cli.keys import ensure_keyring
from symbi_cli.keys_live import publish_keyring
from symbi_cli.nats_server import NatsServer
from symbi_cli.postgres_roles import ensure_service_database, new_password
from symbi_cli.postgres_server import DATABASE_URL_ENV, PostgresServer
from symbi_cli.private_files import private_dir
from symbi_cli.provisioning import provision_nats_async, stream_settings
from symbi_cli.runtime_options import (
    ALL_SERVICES,
    DATABASE_SERVICES,
    DEFAULT_BASE_PORT,
    DEFAULT_NATS_PORT,
    SANDBOX_HOST_ID_ENV,
    SERVICE_PORT_OFFSETS,
    Reporter,
    RuntimeOptions,
    SilentReporter,
    check_installed,
    database_name,
    docker_reachable,
    local_nats_procs,
    package_of,
    parse_services,
    sandbox_host_id,
    service_command,
)
from symbi_cli.runtime_state import claim_home, write_state
from symbi_cli.supervisor import EventKind, ServiceSpec, Supervisor, describe_exit

#: Re-exported: these lived here before the runtime's options and state file got their own modules.
__all__ = [
    "ALL_SERVICES",
    "DATABASE_SERVICES",
    "DEFAULT_BASE_PORT",
    "DEFAULT_NATS_PORT",
    "SANDBOX_HOST_ID_ENV",
    "SERVICE_PORT_OFFSETS",
    "LocalRuntime",
    "Reporter",
    "RuntimeOptions",
    "SilentReporter",
    "check_installed",
    "database_name",
    "docker_reachable",
    "package_of",
    "parse_services",
    "sandbox_host_id",
    "service_command",
]

#: The local PostgreSQL superuser's password, in the operator-only directory (no service reads it).
POSTGRES_SUPERUSER_FILE = "postgres.password"


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def _shorten(message: str, keep: int = 8) -> str:
    """The first line and the last few of a long message (e.g. one that quotes a server log)."""
    lines = message.splitlines()
    if len(lines) <= keep + 1:
        return message
    return "\n".join([lines[0], "…", *lines[-keep:]])


async def _in_thread(fn: Callable[[], object]) -> None:
    """Run blocking start/stop work in a thread; if cancelled, still wait for it, so what it started is known."""
    work = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


class LocalRuntime:
    """Everything ``symbi up`` runs, as one async resource."""

    def __init__(self, options: RuntimeOptions, reporter: Reporter | None = None) -> None:
        self.options = options
        self.reporter: Reporter = reporter or SilentReporter()
        self.home = options.home.resolve()
        self.keys_dir = self.home / "keys"
        #: Operator-only: the root key (and other operator credentials); never given to a service.
        self.operator_dir = self.home / "operator"
        self.state_file = self.home / "run" / "state.json"
        self.env: dict[str, str] = dict(os.environ if options.env is None else options.env)
        self.nats: NatsServer | None = None
        #: One NATS user per service plus ``operator``, with fresh passwords on every start.
        self.nats_passwords: dict[str, str] = {}
        self.postgres: PostgresServer | None = None
        self.supervisor: Supervisor | None = None
        check_installed(options.services)
        self.running_services = list(options.services)
        #: Services left out because this machine lacks what they need (service → why).
        self.unavailable: dict[str, str] = {}
        if "sandbox-agent" in self.running_services and not docker_reachable(self.env):
            self.running_services.remove("sandbox-agent")
            self.unavailable["sandbox-agent"] = "no Docker engine here; run deploy/host/setup-docker.sh (as root)"
        self._owns_state_file = False

    # --- addresses ----------------------------------------------------------------------------

    def url_of(self, service: str) -> str:
        return f"http://{self.options.host}:{self.options.port_of(service)}"

    @property
    def nats_url(self) -> str:
        """The operator's URL (with credentials) for tools such as the demo's stream check."""
        return self.nats_url_for(OPERATOR)

    @property
    def nats_public_url(self) -> str:
        """The server's address without credentials, for display."""
        return without_credentials(self.nats_url)

    def nats_url_for(self, user: str) -> str:
        if self.nats is None:
            raise StartError("nats-server is not running")
        return with_credentials(self.nats.url, user, self.nats_passwords[user])

    # --- start / stop -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; on any failure, stop what did start and re-raise."""
        try:
            await self._start()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, InfraError | KeyringError | InfrastructureError | OSError | asyncpg.PostgresError):
                raise StartError(f"the runtime did not start: {_shorten(str(exc))}") from exc
            raise

    def _stream_settings(self) -> StreamSettings:
        """The configured stream limits (``[nats] events_max_bytes`` …) for this runtime's one nats-server.

        A configuration that asks for replicas is refused: ``symbi up`` runs a single server, and a replicated
        stream would wait for members that never come (a cluster is provisioned with ``symbi nats provision``).
        """
        try:
            configured = stream_settings(load_settings(env=self.env))
        except ConfigError:
            return StreamSettings()  # the services report the broken configuration themselves, naming the setting
        if configured.replicas != 1:
            raise StartError(
                f"[nats] replicas = {configured.replicas}, but symbi up runs one nats-server: replicated streams"
                " need a cluster (deploy/, then `symbi nats provision`)"
            )
        return configured

    async def _start(self) -> None:
        self._claim_home()
        created = ensure_keyring(self.keys_dir, self.operator_dir)
        if created:
            self.reporter.step(f"keyring created in {self.keys_dir}: {', '.join(created)}")
        else:
            self.reporter.step(f"keyring {self.keys_dir}")
        token_file = write_local_token(self.home, self.keys_dir)
        self.reporter.step(f"local admin operator token {token_file} (mode 0600)")

        self.reporter.step("starting nats-server (JetStream, one least-privilege user per service)")
        auth_file = self._write_nats_auth()
        existing_store = (self.home / "nats" / "jetstream").exists()
        nats = NatsServer(
            self.home / "nats",
            port=self.options.nats_port,
            log_file=self.home / "logs" / "nats.log",
            extra_args=("--config", str(auth_file)),
            max_procs=local_nats_procs(),
        )
        self.nats = nats
        await _in_thread(nats.start)
        self._write_secret(self.home / "run" / "nats-operator.url", self.nats_url)
        self.reporter.step(f"nats-server {nats.url} (pid {nats.pid}, store {self.home / 'nats'})")
        # Streams and KV buckets exist before any service starts: services may not create them.
        await provision_nats_async(self.nats_url_for(ADMIN), self._stream_settings(), existing_store=existing_store)
        self.reporter.step("streams and KV buckets provisioned with the admin credential")
        # The key files' registry version on REGISTRY before any service starts: the stream is its record,
        # and what running services follow. One older than the stream's is a rolled-back keyring: refused.
        published = await publish_keyring(self.nats_url_for(OPERATOR), self.keys_dir)
        if published is not None:
            self.reporter.step(f"key registry v{published} published on REGISTRY")

        tag = configured_agent_image(self.env)
        if "sandbox-agent" in self.running_services and tag:
            # DSL bodies and SDK agents run in it: built (or found up to date) before any task can need it.
            self.reporter.step(await asyncio.to_thread(ensure_agent_image, tag, self.env))
        with_db = [s for s in self.running_services if s in DATABASE_SERVICES]
        # The services that keep no database start now, policy first; they boot while PostgreSQL starts.
        self.supervisor = Supervisor(
            [self._spec(service, "") for service in self.running_services if service not in with_db],
            policy=self.options.restart,
            on_output=self.reporter.output,
            on_event=self._on_event,
            grace_period=self.options.grace_period,
        )
        await self.supervisor.start()
        for service, why in self.unavailable.items():
            self.reporter.step(f"{service} not started: {why}")

        admin_url = await self._start_postgres()
        specs = []
        for service in with_db:
            # A fresh password on every start, like the NATS users'; the role's is reset to it.
            db_url = await ensure_service_database(admin_url, database_name(service), new_password())
            specs.append(self._spec(service, db_url))
        if with_db:
            names = ", ".join(database_name(s) for s in with_db)
            self.reporter.step(f"databases {names}, each owned by the login role of the same name, its only user")
        await self.supervisor.add(specs)
        self._write_state()

    async def _start_postgres(self) -> str:
        """Start the local PostgreSQL (or take ``SYMBI_DATABASE_URL``'s); returns the superuser's URL."""
        external = self.env.get(DATABASE_URL_ENV, "")
        if external:
            self.reporter.step(f"PostgreSQL from {DATABASE_URL_ENV}")
            return external
        self.reporter.step(f"starting PostgreSQL in {self.home / 'pg'} (every login needs its password)")
        pg = PostgresServer(self.home / "pg", password_file=self.operator_dir / POSTGRES_SUPERUSER_FILE)
        self.postgres = pg
        await _in_thread(pg.start)
        # Run as root, pgserver opens the home to group and others (g+rx, o+rx) so that its
        # ``pgserver`` user reaches the data directory; it needs to traverse the home, not list it.
        os.chmod(self.home, stat.S_IMODE(self.home.stat().st_mode) & ~0o066)
        self.reporter.step(f"PostgreSQL (pid {_postmaster_pid(pg.data_dir)}, data {pg.data_dir})")
        self._write_state()
        return pg.uri

    def _write_nats_auth(self) -> Path:
        users = nats_users()
        self.nats_passwords = {user: secrets.token_urlsafe(24) for user in users}
        path = self.home / "nats-auth.conf"
        self._write_secret(path, authorization_config(self.nats_passwords))
        return path

    @staticmethod
    def _write_secret(path: Path, text: str) -> None:
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def _spec(self, service: str, database_url: str) -> ServiceSpec:
        env = dict(self.env)
        # Services log for a person reading the terminal unless asked otherwise.
        env.setdefault("SYMBI_LOG_FORMAT", "console")
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "SYMBI_NATS_URL": self.nats_url_for(service),
                "SYMBI_DATABASE_URL": database_url,
                # The service's own key directory only: its keys, root.pub and the signed registry.
                "SYMBI_KEYS_DIR": str(self.keys_dir / service),
                "SYMBI_SIGNING_KEY_PATH": str(self.keys_dir / service / "signing.key"),
                "SYMBI_WRAP_KEY_PATH": str(self.keys_dir / service / "wrap.key"),
                "SYMBI_ROOT_PUBLIC_KEY_PATH": str(self.keys_dir / service / "root.pub"),
                "SYMBI_POLICY__LOG_SPOOL_DIR": str(self.home / "spool"),
                "SYMBI_HTTP_HOST": self.options.host,
                "SYMBI_HTTP_PORT": str(self.options.port_of(service)),
            }
        )
        if service == "context":
            env.setdefault("SYMBIONT_VECTOR_DATA_PATH", str(self.home / "vectors"))
        if service == "sandbox-agent":
            host_id = sandbox_host_id(self.home, env)
            if host_id is not None:
                env[SANDBOX_HOST_ID_ENV] = host_id
        return ServiceSpec(
            name=service,
            argv=service_command(service),
            env=env,
            ready_url=f"{self.url_of(service)}/readyz",
            cwd=self.home,
            stop_last=service == "policy",  # the others' decision logs flush to it on their way out
        )

    def _on_event(self, service: str, message: str, kind: EventKind) -> None:
        self.reporter.event(service, message, kind)
        if message.startswith("started"):
            self._write_state()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running service answers ``/readyz`` with 200."""
        if self.supervisor is not None:
            await self.supervisor.wait_ready(timeout=timeout)

    async def stop(self) -> None:
        """Stop the services, then nats-server, then PostgreSQL. Idempotent; safe after a failed start."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        nats, self.nats = self.nats, None
        if nats is not None:
            self.reporter.step("stopping nats-server")
            await _in_thread(nats.stop)
        pg, self.postgres = self.postgres, None
        if pg is not None:
            self.reporter.step("stopping PostgreSQL")
            await _in_thread(pg.stop)
        if self._owns_state_file:  # never another runtime's files (a refused second start ends up here)
            (self.home / "run" / "nats-operator.url").unlink(missing_ok=True)
            self.state_file.unlink(missing_ok=True)
            self._owns_state_file = False

    async def __aenter__(self) -> LocalRuntime:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- state file ---------------------------------------------------------------------------

    def _claim_home(self) -> None:
        claim_home(self.home, self.state_file, self.reporter)
        self._owns_state_file = True
        self._write_state()

    def state(self) -> dict[str, object]:
        """Pids and addresses of everything running."""
        services: dict[str, object] = {}
        pids = self.supervisor.pids() if self.supervisor is not None else {}
        for service in self.running_services:
            entry: dict[str, object] = {"pid": pids.get(service), "url": self.url_of(service), "restarts": 0}
            if self.supervisor is not None and service in self.supervisor.names:
                # So `symbi status` can say that a service crashed and was restarted, and how it ended.
                status = self.supervisor.status(service)
                entry["restarts"] = max(status.starts - 1, 0)
                if status.starts > 1:
                    entry["last_exit"] = describe_exit(status.last_exit)
            services[service] = entry
        return {
            "supervisor_pid": os.getpid(),
            "home": str(self.home),
            "nats": {"pid": self.nats.pid, "url": self.nats.url} if self.nats and self.nats.running else None,
            "postgres": (
                {"pid": _postmaster_pid(self.postgres.data_dir), "data_dir": str(self.postgres.data_dir)}
                if self.postgres is not None and self.postgres.running
                else None
            ),
            "services": services,
            "unavailable": self.unavailable,
        }

    def _write_state(self) -> None:
        write_state(self.state_file, self.state())
