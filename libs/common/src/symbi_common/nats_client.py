"""How a client connects to NATS: its URLs and the credentials in them, TLS, and how it keeps a connection.

Every connection of the runtime — the services, ``symbi up``, every CLI command, the tests and benchmarks —
gets its ``nats.connect`` keyword arguments from :func:`server_options`. The users and what each may do are
:mod:`symbi_common.natsauth`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from symbi_common.errors import ConfigError
from symbi_common.natsauth import inbox_prefix


def client_tls(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext | None:
    """The client side: trust ``ca_file`` and present ``cert_file``/``key_file`` (mutual TLS). ``None`` without a CA.

    A certificate or key without a CA, or a file that cannot be loaded, is a :class:`ConfigError`: never a
    connection that silently goes without TLS or without the client certificate.
    """
    if not ca_file:
        if cert_file or key_file:
            raise ConfigError(
                "a NATS client certificate (tls_cert / tls_key) needs tls_ca, the CA of the server's certificate",
                setting="nats.tls_ca",
            )
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file:
            context.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the NATS TLS files (tls_ca {ca_file!r}, tls_cert {cert_file!r}, tls_key {key_file!r}): {exc}",
            setting="nats.tls_ca",
        ) from None
    return context


def with_credentials(url: str, user: str, password: str) -> str:
    """``nats://host:port`` with ``user:password@`` added."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_credentials(url: str) -> str:
    """The URL (or comma-separated URLs) with any ``user:password@`` removed, for display."""
    return ",".join(_bare(u) for u in url.split(","))


def _bare(url: str) -> str:
    parts = urlsplit(url.strip())
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", parts.fragment))


#: The query parameters a NATS URL may carry, like a PostgreSQL connection URI's ``sslrootcert`` … : the TLS
#: files of the client that uses it (the same names as the ``[nats]`` settings).
URL_TLS_PARAMS = ("tls_ca", "tls_cert", "tls_key")


def _url_tls(url: str) -> tuple[str, str, str]:
    """The ``tls_ca``, ``tls_cert`` and ``tls_key`` query parameters of ``url`` (empty when absent)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True, strict_parsing=False):
        if name not in URL_TLS_PARAMS:
            raise ConfigError(
                f"unknown parameter {name!r} in a NATS URL; it may carry {', '.join(URL_TLS_PARAMS)}",
                setting="nats.url",
            )
        if name in params:
            raise ConfigError(f"parameter {name!r} is given twice in a NATS URL", setting="nats.url")
        params[name] = value
    return params.get("tls_ca", ""), params.get("tls_cert", ""), params.get("tls_key", "")


#: How a long-running client (every service) keeps its connection: reconnect forever, every 0.5 s, and
#: give up on a server that stopped answering (frozen, cut off) after about 8 s of silence — nats-py's
#: defaults (a ping every 2 minutes, 2 outstanding) would wait 4 to 6 minutes before moving to another
#: member of the cluster.
RESILIENT_CLIENT: Mapping[str, Any] = {
    "max_reconnect_attempts": -1,
    "reconnect_time_wait": 0.5,
    "ping_interval": 2,
    "max_outstanding_pings": 3,
}


def server_options(url: str, *, tls_ca: str = "", tls_cert: str = "", tls_key: str = "") -> dict[str, Any]:
    """``nats.connect`` keyword arguments for ``url``: one URL or several, comma-separated (cluster members).

    Credentials in a URL become the ``user``/``password`` options, so they go to every server of the
    pool, including the members the client only learns from the cluster: nats-py sends a URL's
    credentials only to that URL, and a reconnect to a discovered member would be refused. The user's
    ``inbox_prefix`` comes with them: it may subscribe to no other inboxes (:func:`inbox_prefix`).
    TLS: the URL's ``?tls_ca=…&tls_cert=…&tls_key=…`` (a deployment's operator URL carries them), else
    ``tls_ca`` / ``tls_cert`` / ``tls_key`` (the ``[nats]`` settings); a CA switches it on (:func:`client_tls`).
    With a client certificate the user name is not sent: a deployment's nats-server takes the user from the
    certificate (``verify_and_map``) and checks the password against that user's, so the URL's user must be the
    certificate's (its inbox prefix is that user's).
    Raises :class:`ConfigError` when there is no URL, the URLs name different users or different TLS files,
    a URL has another parameter, or both the URL and the settings name TLS files.
    """
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ConfigError("no NATS URL given", setting="nats.url")
    users = {(unquote(p.username), unquote(p.password or "")) for p in map(urlsplit, urls) if p.username}
    if len(users) > 1:
        raise ConfigError(
            "the URLs name different users; every member must be reached as the same user", setting="nats.url"
        )
    in_urls = {_url_tls(u) for u in urls}
    if len(in_urls) > 1:
        raise ConfigError("the URLs name different TLS files; every member is reached alike", setting="nats.url")
    from_url = in_urls.pop()
    if any(from_url) and any((tls_ca, tls_cert, tls_key)):
        raise ConfigError(
            "TLS files are given both in the NATS URL and in the [nats] tls_* settings; give them once",
            setting="nats.url",
        )
    options: dict[str, Any] = {"servers": [_bare(u) for u in urls]}
    files = from_url if any(from_url) else (tls_ca, tls_cert, tls_key)
    if users:
        user, password = users.pop()
        options["user"] = "" if files[1] else user  # "": the server maps the certificate to its user
        options["password"] = password
        options["inbox_prefix"] = inbox_prefix(user)
    context = client_tls(*files)
    if context is not None:
        options["tls"] = context
    return options


__all__: Sequence[str] = [
    "RESILIENT_CLIENT",
    "URL_TLS_PARAMS",
    "client_tls",
    "server_options",
    "with_credentials",
    "without_credentials",
]
