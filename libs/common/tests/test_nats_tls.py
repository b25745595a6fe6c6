"""TLS to NATS as a configuration switch, once against a real nats-server with a CA made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from symbi_cli.nats_server import NatsServer
from symbi_cli.provisioning import provision_nats_async
from symbi_common.nats_client import client_tls, connect_options
from symbi_common.natsauth import tls_config
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    key_path = path.with_suffix(".key")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path), str(key_path)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str, usage: x509.ObjectIdentifier
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A self-signed CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("symbi test CA"))
        .issuer_name(_name("symbi test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, _ = _write(tmp_path / "ca.pem", ca_key, ca)
    server_cert, server_key = _write(
        tmp_path / "server.pem", *_issue(ca_key, ca, "nats", ExtendedKeyUsageOID.SERVER_AUTH)
    )
    client_cert, client_key = _write(
        tmp_path / "client.pem", *_issue(ca_key, ca, "svc", ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    return {
        "ca": ca_file,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


async def test_services_reach_nats_over_mutual_tls_and_plain_clients_are_refused(
    tmp_path: Path, pki: dict[str, str], keys_dir: Path
) -> None:
    conf = tmp_path / "tls.conf"
    conf.write_text(tls_config(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"]))
    with NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log", extra_args=("--config", str(conf))) as server:
        url = server.url.replace("nats://", "tls://")
        options = connect_options(pki["ca"], pki["client_cert"], pki["client_key"])
        await provision_nats_async(url, **options)  # the admin, over TLS too

        # No TLS, or TLS without a client certificate: refused.
        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)
        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError)):
            await nats.connect(url, tls=client_tls(pki["ca"]), allow_reconnect=False, connect_timeout=2)

        # The switch: [nats] tls_ca / tls_cert / tls_key. A service starts and works over TLS.
        env = {
            "SYMBI_NATS_URL": url,
            "SYMBI_KEYS_DIR": str(keys_dir / "policy"),
            "SYMBI_NATS_TLS_CA": pki["ca"],
            "SYMBI_NATS_TLS_CERT": pki["client_cert"],
            "SYMBI_NATS_TLS_KEY": pki["client_key"],
        }
        runtime = ServiceRuntime("policy", load_settings(env=env), use_database=False)
        try:
            await runtime.start()
            assert runtime.nc.is_connected
            assert runtime.nc._current_server.uri.scheme == "tls"
            ack = await runtime.js.publish("evt.policy.tls", b"over tls")
            assert ack.stream == "EVENTS"
        finally:
            await runtime.stop()

    assert "TLS" in (tmp_path / "nats.log").read_text()


def test_client_tls_is_off_without_a_ca() -> None:
    assert connect_options() == {}
    assert client_tls("") is None
