"""How the CLI reaches the services' HTTP APIs: the scheme, and whom it trusts.

A deployment directory (``symbi deploy init DIR``) holds the deployment's TLS CA certificate, and its services
serve HTTPS with certificates of that CA (:mod:`symbi_cli.deploy_tls`). Used as a home (``--home DIR``), it makes
every command speak HTTPS to the services and trust that CA only: a server that cannot show a certificate of it
is refused, never spoken to in clear. A home without that file (``symbi up``'s ``.symbi``: its services listen
on loopback only) is spoken to over plain HTTP. ``$SYMBI_HTTP_CA`` names a CA file explicitly, for a deployment
reached from another machine; it also switches the default URLs to HTTPS.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from symbi_cli.credentials import default_home
from symbi_cli.errors import CliError
from symbi_cli.runtime_options import DEFAULT_BASE_PORT, SERVICE_PORT_OFFSETS
from symbi_cli.runtime_state import read_state

#: The variable naming the CA certificate (PEM) the services' certificates are checked against.
CA_ENV = "SYMBI_HTTP_CA"
#: Where a deployment directory keeps its CA certificate (public): ``DIR/tls/ca.pem``.
DEPLOYMENT_CA = Path("tls") / "ca.pem"


class HttpTlsError(CliError):
    """The CA the services' certificates are to be checked against cannot be used."""


def ca_file(home: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """``$SYMBI_HTTP_CA``, else the home's deployment CA if it has one, else ``None`` (plain HTTP).

    A ``$SYMBI_HTTP_CA`` that names no file is an :class:`HttpTlsError`: asked for TLS, never fall back to clear.
    """
    environ = os.environ if env is None else env
    explicit = environ.get(CA_ENV, "").strip()
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HttpTlsError(f"{CA_ENV}={explicit}: no such file")
        return path
    candidate = (home or default_home()) / DEPLOYMENT_CA
    return candidate if candidate.is_file() else None


def scheme(home: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """``https`` when there is a CA to check the services against (:func:`ca_file`), else ``http``."""
    return "https" if ca_file(home, env) is not None else "http"


def service_url(port: int, home: Path | None = None, *, host: str = "127.0.0.1") -> str:
    """The base URL of the service listening on ``host:port``, in the home's scheme."""
    return f"{scheme(home)}://{host}:{port}"


def default_service_url(service: str, home: Path | None = None) -> str:
    """The URL of ``service`` at its default port on loopback (base port 8080), in the home's scheme."""
    return service_url(DEFAULT_BASE_PORT + SERVICE_PORT_OFFSETS[service], home)


def service_urls(home: Path, base_port: int | None) -> dict[str, str]:
    """Each service's base URL: as ``symbi up``'s state file of ``home`` records it (unless ``base_port`` is
    given), else ``127.0.0.1:<base + offset>`` in the home's scheme (HTTPS for a deployment directory)."""
    state = None if base_port is not None else read_state(home.resolve())
    recorded = state.get("services", {}) if state else {}
    urls = {}
    for name, offset in SERVICE_PORT_OFFSETS.items():
        entry = recorded.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("url"), str):
            urls[name] = str(entry["url"]).rstrip("/")
        else:
            urls[name] = service_url((base_port or DEFAULT_BASE_PORT) + offset, home)
    return urls


def verify(home: Path | None = None, env: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """What an ``httpx`` client passes as ``verify``: a context trusting only the CA of :func:`ca_file`, or
    ``True`` (the system's roots, for an explicit ``https://`` URL without a CA of ours)."""
    ca = ca_file(home, env)
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as err:
        raise HttpTlsError(f"cannot use {ca} as the services' CA: {err}") from None
