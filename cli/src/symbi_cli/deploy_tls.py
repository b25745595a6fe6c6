"""The deployment's TLS: a private CA, nats-server's certificate and one certificate per NATS client party.

NATS carries every credential (a client's password travels in its CONNECT line), every event and the bus, so a
deployment speaks to it over mutual TLS only: nats-server refuses a connection that does not present a
certificate this CA signed, and every client checks the server's name against the CA. nats-server takes a
client's NATS user from its certificate (``verify_and_map``: the first DNS name in it that is a user's name,
:func:`nats_user`), then checks that user's password: a password is of no use with another party's certificate.
Cluster routes use the server's certificate both ways (it is issued for server and client authentication). Each service's
certificate also serves its HTTP API over HTTPS (:data:`SERVICE_NAME` and :func:`service_names`: the names it is
reached by), so operator tokens and API answers never cross the network in clear. ``symbi deploy init DIR``
writes (:func:`ensure_tls`)::

    DIR/operator/tls-ca.key      the CA's private key: mounted into no container, like the root key
    DIR/tls/ca.pem               the CA's certificate (public, 0644: Prometheus mounts it to check the services)
    DIR/tls/<party>/             ca.pem, cert.pem, key.pem for nats-server (``nats``), Jaeger (``jaeger``: its
                                 OTLP receiver takes spans over mutual TLS only), each service, the
                                 provisioning job (``provision``) and the operator's CLI (``operator``);
                                 each container mounts only its own directory, as /tls

Idempotent: what is there and still good is kept. A certificate is issued again when it is missing, expires
within :data:`RENEW_BEFORE`, was not signed by the current CA, or (a server's: nats-server's, Jaeger's, a
service's) does not name every address it is reached by. A CA certificate without its key is refused
(:class:`TlsError`): the certificates it signed could not be renewed, and replacing it would silently cut off
every party that trusts it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from symbi_common.key_material import write_atomically
from symbi_common.natsauth import ADMIN, OPERATOR, nats_users

from symbi_cli.errors import CliError
from symbi_cli.private_files import private_dir
from symbi_cli.runtime_options import ALL_SERVICES

#: nats-server's own directory under ``DIR/tls``.
NATS_PARTY = "nats"
#: Jaeger's own directory: its OTLP receiver takes spans only over TLS from holders of a certificate of this CA.
JAEGER_PARTY = "jaeger"
#: The NATS clients of a deployment, each with its own certificate (the common name is the party).
CLIENT_PARTIES: tuple[str, ...] = (*ALL_SERVICES, "provision", OPERATOR)
#: The NATS user of each client party that is not a service (a service logs in as itself): the provisioning job
#: is the ``admin``, the operator's CLI the ``operator``.
_NATS_USERS: dict[str, str] = {"provision": ADMIN, OPERATOR: OPERATOR}
#: Every party with a directory under ``DIR/tls``.
PARTIES: tuple[str, ...] = (NATS_PARTY, JAEGER_PARTY, *CLIENT_PARTIES)
#: The Kubernetes namespace of deploy/k8s (kustomization.yaml).
K8S_NAMESPACE = "symbi"
#: Every name a client or a route may reach nats-server by: the compose service, the Kubernetes Services
#: (`nats`, the headless `symbi-nats` with one name per member) and loopback (published port, port-forward).
SERVER_NAMES: tuple[str, ...] = (
    "nats",
    f"nats.{K8S_NAMESPACE}",
    f"nats.{K8S_NAMESPACE}.svc",
    f"nats.{K8S_NAMESPACE}.svc.cluster.local",
    "*.symbi-nats",
    f"*.symbi-nats.{K8S_NAMESPACE}",
    f"*.symbi-nats.{K8S_NAMESPACE}.svc",
    f"*.symbi-nats.{K8S_NAMESPACE}.svc.cluster.local",
    "localhost",
    "127.0.0.1",
    "::1",
)
#: Every name the services reach Jaeger's OTLP receiver by: the compose service, the Kubernetes Service, loopback.
JAEGER_NAMES: tuple[str, ...] = (
    "jaeger",
    f"jaeger.{K8S_NAMESPACE}",
    f"jaeger.{K8S_NAMESPACE}.svc",
    f"jaeger.{K8S_NAMESPACE}.svc.cluster.local",
    "localhost",
    "127.0.0.1",
    "::1",
)
#: A name every service's certificate carries besides its own: Prometheus scrapes the services' pods by address,
#: which no certificate names, and checks that each shows a certificate of this CA for this name.
SERVICE_NAME = "symbi-service"
#: The other compose services that run with a service's certificate: its replicas (docker-compose.yml).
REPLICAS: dict[str, tuple[str, ...]] = {"policy": ("policy-2",)}
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=397)
#: A certificate closer than this to its end is issued again by the next ``symbi deploy init``.
RENEW_BEFORE = dt.timedelta(days=30)
CA_KEY_FILE = Path("operator") / "tls-ca.key"
CA_CERT_FILE = Path("tls") / "ca.pem"


class TlsError(CliError):
    """The deployment directory's TLS material cannot be used as it is."""


@dataclass(frozen=True, slots=True)
class PartyFiles:
    """The three files of one party's directory (``DIR/tls/<party>``), as mounted at ``/tls``."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"


def party_files(directory: Path, party: str) -> PartyFiles:
    return PartyFiles(directory / "tls" / party)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "symbi"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as an unencrypted PKCS#8 PEM, as every party's ``key.pem`` is written."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """``cert`` as PEM, as every ``cert.pem`` and ``ca.pem`` is written."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("symbi deployment CA"))
        .issuer_name(_name("symbi deployment CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def nats_user(party: str) -> str | None:
    """The NATS user ``party``'s certificate logs in as (None: nats-server's and Jaeger's, which log in as none).

    nats-server maps a client certificate to the first of its DNS names that is a user's name (``verify_and_map``),
    so each client party's certificate carries its user's name, and no other user's (:func:`issue` refuses).
    """
    if party not in CLIENT_PARTIES:
        return None
    return _NATS_USERS.get(party, party)


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    party: str,
    *,
    server_names: Sequence[str] = (),
    client_names: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for ``party`` (its common name): client authentication (as ``client_names``, the names
    nats-server maps to a user), and server authentication for ``server_names`` when given (nats-server: its
    routes dial out as clients with the same certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(party))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + LEAF_LIFETIME, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if server_names:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    names = [*client_names, *(n for n in server_names if n not in client_names)]
    users = set(nats_users()) & set(names)
    if len(users) > 1 or not users <= set(client_names):
        raise TlsError(f"a certificate for {party} would name the NATS users {sorted(users)}: it may name its own only")
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def needs_issuing(cert: x509.Certificate | None, ca: x509.Certificate, names: Sequence[str] = ()) -> bool:
    """Whether a party's certificate must be issued (again): missing, ending soon, another CA's, or not carrying
    every name in ``names`` (a server's addresses, a client's NATS user)."""
    if cert is None or not _signed_by(cert, ca):
        return True
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return True
    return not set(names) <= _names_of(cert)


def _key_of(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def service_names(service: str) -> tuple[str, ...]:
    """Every name a service's HTTP API is reached by: its compose service (and replicas'), its Kubernetes Service
    ``symbi-<service>`` (short and qualified), the shared :data:`SERVICE_NAME` and loopback (published ports,
    port-forward)."""
    k8s = f"symbi-{service}"
    qualified = (f"{k8s}.{K8S_NAMESPACE}", f"{k8s}.{K8S_NAMESPACE}.svc", f"{k8s}.{K8S_NAMESPACE}.svc.cluster.local")
    return (service, *REPLICAS.get(service, ()), k8s, *qualified, SERVICE_NAME, "localhost", "127.0.0.1", "::1")


def _server_names(party: str) -> tuple[str, ...]:
    """The names ``party``'s certificate serves under: nats-server's, Jaeger's, a service's, none for another
    client."""
    if party == NATS_PARTY:
        return SERVER_NAMES
    if party == JAEGER_PARTY:
        return JAEGER_NAMES
    return service_names(party) if party in ALL_SERVICES else ()


def _client_names(party: str) -> tuple[str, ...]:
    """The name nats-server maps ``party``'s certificate to: its NATS user (none for a party that is no client)."""
    user = nats_user(party)
    return () if user is None else (user,)


def _due(directory: Path, party: str, ca: x509.Certificate) -> bool:
    """Whether ``party``'s certificate must be issued (again), or its key is missing or not the certificate's."""
    files = party_files(directory, party)
    cert = _load_cert(files.cert)
    if needs_issuing(cert, ca, (*_client_names(party), *_server_names(party))):
        return True
    key = _key_of(files.key)
    return cert is None or key is None or key.public_key() != cert.public_key()


def parties_due(directory: Path) -> list[str]:
    """The parties whose certificate :func:`ensure_tls` would issue (again) now; every party before there is a
    CA. Reads only."""
    ca = _load_cert(directory / CA_CERT_FILE)
    return [p for p in PARTIES if ca is None or _due(directory, p, ca)]


def _ensure_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
    cert = _load_cert(cert_path)
    if cert is not None and not key_path.exists():
        raise TlsError(
            f"{cert_path} exists but its key {key_path} is missing: restore the key, or remove {directory / 'tls'}"
            " to make a new CA (every party then needs its new certificate)"
        )
    if cert is not None and cert.not_valid_after_utc - _now() >= LEAF_LIFETIME:
        key = _key_of(key_path)
        if key is None or key.public_key() != cert.public_key():
            raise TlsError(f"{key_path} is not the key of {cert_path}")
        return key, cert
    if cert is not None:
        raise TlsError(
            f"the deployment CA {cert_path} ends on {cert.not_valid_after_utc:%Y-%m-%d}, before a certificate it"
            f" would issue now: remove {directory / 'tls'} and {key_path} to make a new CA"
        )
    key, cert = new_ca()
    write_atomically(key_path, key_pem(key), 0o600)
    write_atomically(cert_path, cert_pem(cert), 0o644)
    return key, cert


def ensure_tls(directory: Path, *, uid: int | None = None) -> list[str]:
    """Create or complete the deployment directory's TLS material; returns the parties issued a certificate.

    With ``uid``, the parties' directories and files are handed to that user (the containers'), except the
    operator's, which stays the caller's. ``DIR/tls`` itself is the caller's, 0700.
    """
    private_dir(directory / "tls")
    ca_key, ca = _ensure_ca(directory)
    os.chmod(directory / CA_CERT_FILE, 0o644)  # public; 0600 before HTTPS, when only the parties' copies were read
    ca_pem = cert_pem(ca)
    issued = []
    for party in PARTIES:
        files = party_files(directory, party)
        private_dir(files.directory)
        if _due(directory, party, ca):
            key, cert = issue(ca_key, ca, party, server_names=_server_names(party), client_names=_client_names(party))
            write_atomically(files.key, key_pem(key), 0o400)
            write_atomically(files.cert, cert_pem(cert), 0o400)
            issued.append(party)
        if not files.ca.exists() or files.ca.read_bytes() != ca_pem:
            write_atomically(files.ca, ca_pem, 0o400)
        if uid is not None and party != "operator":
            for path in (files.directory, files.ca, files.cert, files.key):
                os.chown(path, uid, uid)
    return issued
