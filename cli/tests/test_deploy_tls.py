"""A deployment's NATS speaks mutual TLS only (symbi_cli.deploy_tls, deploy/nats/nats.conf).

The material ``symbi deploy init`` writes, run for real: nats-server with the compose stack's own nats.conf and
users.conf, a service connecting the way its env file says, the operator through ``run/nats-operator.url``; and
everything else refused — a plain connection, TLS without a client certificate, a certificate of another CA, a
right certificate with a wrong password. Then how the material is kept, renewed and refused.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from symbi_cli.deploy_dir import CONTAINER_TLS_ENV, TLS_MOUNT, DeployConfig, init_deploy_dir, parse_env
from symbi_cli.deploy_tls import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CLIENT_PARTIES,
    JAEGER_NAMES,
    JAEGER_PARTY,
    NATS_PARTY,
    PARTIES,
    SERVER_NAMES,
    SERVICE_NAME,
    TlsError,
    cert_pem,
    ensure_tls,
    issue,
    key_pem,
    nats_user,
    new_ca,
    parties_due,
    party_files,
    service_names,
)
from symbi_cli.main import app
from symbi_cli.nats_server import NatsServer
from symbi_cli.runtime_options import ALL_SERVICES
from symbi_common.nats_client import client_tls, server_options
from symbi_common.natsauth import ADMIN, OPERATOR, nats_users
from symbi_fixtures.pem_files import write_pem_pair
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"runtime": "symbi/runtime:abc", "jaeger": "symbi/jaeger:def", "prometheus": "symbi/prometheus:ghi"}
REFUSED = (nats.errors.Error, OSError, ssl.SSLError, TimeoutError)


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is no longer in deploy/nats/nats.conf"
    return text.replace(old, new)


def compose_nats(directory: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> NatsServer:
    """nats-server with deploy/nats/nats.conf and users.conf as the compose stack runs them, its /tls mount
    being the deployment directory's ``tls/nats`` and its passwords those of ``env/nats.env``."""
    conf = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    conf = _replace(conf, f'"{TLS_MOUNT}/', f'"{directory}/tls/{NATS_PARTY}/')
    conf = _replace(conf, "http_port: 8222\n", "")
    conf = _replace(conf, "store_dir: /data\n", "")  # NatsServer gives its own
    conf = _replace(conf, "server_name: $NATS_SERVER_NAME\n", "server_name: tls-test\n")
    (tmp / "nats.conf").write_text(conf)
    (tmp / "users.conf").write_text((REPO / "deploy" / "nats" / "users.conf").read_text())
    for name, value in parse_env((directory / "env" / "nats.env").read_text()).items():
        monkeypatch.setenv(name, value)  # users.conf reads them
    return NatsServer(tmp / "store", log_file=tmp / "nats.log", extra_args=("--config", str(tmp / "nats.conf")))


def in_container(value: str, directory: Path, party: str) -> str:
    """An env file's value as the party's container sees it, turned into this host's paths (also those in a
    URL's query)."""
    here = f"{directory}/tls/{party}/"
    return value.replace(f"{TLS_MOUNT}/", here).replace(quote_plus(f"{TLS_MOUNT}/"), quote_plus(here))


def container_tls(env: dict[str, str], directory: Path, party: str) -> dict[str, str]:
    """The ``server_options`` TLS arguments of an env file's ``SYMBI_NATS_TLS_*``, as this host's paths."""
    return {
        "tls_ca": in_container(env["SYMBI_NATS_TLS_CA"], directory, party),
        "tls_cert": in_container(env["SYMBI_NATS_TLS_CERT"], directory, party),
        "tls_key": in_container(env["SYMBI_NATS_TLS_KEY"], directory, party),
    }


async def connects(**options: Any) -> bool:
    try:
        nc = await nats.connect(**options, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
    except REFUSED:
        return False
    try:
        await nc.flush(timeout=3)
        return nc.is_connected
    finally:
        await nc.close()


async def test_the_stack_reaches_nats_over_mutual_tls_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "deploy"
    init_deploy_dir(directory, DeployConfig(images=IMAGES), uid=os.getuid())
    (tmp_path / "server").mkdir()
    with compose_nats(directory, tmp_path / "server", monkeypatch) as server:
        port = server.url.rsplit(":", 1)[1]

        # A service, exactly as its env file says (the compose service name `nats` is in the certificate too).
        env = parse_env((directory / "env" / "lifecycle.env").read_text())
        assert env["SYMBI_NATS_URL"].startswith("tls://lifecycle:")
        assert {k: env[k] for k in CONTAINER_TLS_ENV} == dict(CONTAINER_TLS_ENV)
        url = env["SYMBI_NATS_URL"].replace("@nats:4222", f"@127.0.0.1:{port}")
        tls = container_tls(env, directory, "lifecycle")
        assert await connects(**server_options(url, **tls))

        # The operator's CLI: the URL file alone carries the files (`--home DIR`).
        operator_url = (directory / "run" / "nats-operator.url").read_text().strip()
        assert operator_url.startswith("tls://operator:")
        assert await connects(**server_options(operator_url.replace(":4222", f":{port}", 1)))

        # The provisioning job's admin (settings) and operator (URL) connections.
        provision = parse_env((directory / "env" / "provision.env").read_text())
        admin_url = provision["SYMBI_NATS_URL"].replace("@nats:4222", f"@127.0.0.1:{port}")
        assert await connects(**server_options(admin_url, **container_tls(provision, directory, "provision")))
        publisher = in_container(provision["SYMBI_OPERATOR_NATS_URL"], directory, "provision")
        assert await connects(**server_options(publisher.replace("@nats:4222", f"@127.0.0.1:{port}")))

        # Refused: no TLS; TLS without a client certificate; a certificate another CA signed; a wrong password.
        plain = server_options(url.replace("tls://", "nats://"))
        assert not await connects(**plain)
        assert not await connects(**server_options(url, tls_ca=tls["tls_ca"]))
        other_key, other_ca = new_ca()
        key, cert = issue(other_key, other_ca, "lifecycle")
        other_cert, other_key_file = write_pem_pair(tmp_path, key, cert, cert_name="other.pem", key_name="other.key")
        forged = {
            "tls_ca": tls["tls_ca"],
            "tls_cert": str(other_cert),
            "tls_key": str(other_key_file),
        }
        assert not await connects(**server_options(url, **forged))
        wrong = server_options(url, **tls) | {"password": "not-the-password"}
        assert not await connects(**wrong)

        # The certificate names the user: another party's certificate with this user's password is refused (it
        # logs in as its own user, whose password this is not), whether the user's name is sent or not.
        scheduler_env = parse_env((directory / "env" / "scheduler.env").read_text())
        scheduler = container_tls(scheduler_env, directory, "scheduler")
        own = scheduler_env["SYMBI_NATS_URL"].replace("@nats:4222", f"@127.0.0.1:{port}")
        assert await connects(**server_options(own, **scheduler))
        assert not await connects(**server_options(url, **scheduler))
        assert not await connects(**(server_options(url, **scheduler) | {"user": "lifecycle"}))
        operator = party_files(directory, OPERATOR)
        as_operator = {"tls_ca": str(operator.ca), "tls_cert": str(operator.cert), "tls_key": str(operator.key)}
        assert not await connects(**server_options(admin_url, **as_operator))

        # A client that trusts another CA does not take this server for the deployment's.
        (tmp_path / "other-ca.pem").write_bytes(cert_pem(other_ca))
        impostor_check = client_tls(str(tmp_path / "other-ca.pem"), tls["tls_cert"], tls["tls_key"])
        assert not await connects(**(server_options(url) | {"tls": impostor_check}))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_material_is_kept_and_each_party_has_its_own(tmp_path: Path) -> None:
    issued = ensure_tls(tmp_path)
    assert issued == [NATS_PARTY, JAEGER_PARTY, *CLIENT_PARTIES] == list(PARTIES)
    ca = _cert(tmp_path / CA_CERT_FILE)
    server = _cert(party_files(tmp_path, NATS_PARTY).cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))} == set(
        SERVER_NAMES
    )
    keys = set()
    for party in PARTIES:
        files = party_files(tmp_path, party)
        cert = _cert(files.cert)
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == party
        assert files.ca.read_bytes() == (tmp_path / CA_CERT_FILE).read_bytes()
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o400
        assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
        keys.add(files.key.read_bytes())
    assert len(keys) == len(PARTIES), "two parties share a key"
    assert stat.S_IMODE((tmp_path / CA_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / CA_CERT_FILE).stat().st_mode) == 0o644  # public: Prometheus mounts it
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700

    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert ensure_tls(tmp_path) == []
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))}


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_services_certificate_serves_its_api_under_every_name_it_is_reached_by(tmp_path: Path) -> None:
    ensure_tls(tmp_path)
    for service in ALL_SERVICES:
        cert = _cert(party_files(tmp_path, service).cert)
        k8s = f"symbi-{service}"
        assert {service, k8s, f"{k8s}.symbi.svc.cluster.local", SERVICE_NAME, "localhost", "127.0.0.1"} <= _names(cert)
        assert _usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert "policy-2" in _names(_cert(party_files(tmp_path, "policy").cert))  # the compose replica
    assert _names(_cert(party_files(tmp_path, JAEGER_PARTY).cert)) == set(JAEGER_NAMES)  # its OTLP receiver
    for client in ("provision", "operator"):  # serve nothing
        cert = _cert(party_files(tmp_path, client).cert)
        assert _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_each_client_certificate_names_its_nats_user_and_no_other(tmp_path: Path) -> None:
    """nats-server maps a certificate to the first DNS name in it that is a user's (``verify_and_map``): each
    client party's names its own user, none another's; nats-server's and Jaeger's name no user."""
    ensure_tls(tmp_path)
    users = set(nats_users())
    expected = {**{s: s for s in ALL_SERVICES}, "provision": ADMIN, "operator": OPERATOR}
    for party in PARTIES:
        cert = _cert(party_files(tmp_path, party).cert)
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = [n for n in dns.get_values_for_type(x509.DNSName) if n in users]
        assert named == ([expected[party]] if party in expected else []), party
        assert nats_user(party) == expected.get(party)
    ca_key = serialization.load_pem_private_key((tmp_path / CA_KEY_FILE).read_bytes(), password=None)
    with pytest.raises(TlsError, match="NATS users"):  # a name of another user is refused, not issued
        issue(ca_key, _cert(tmp_path / CA_CERT_FILE), "lifecycle", server_names=("scheduler",))  # type: ignore[arg-type]


def test_a_client_certificate_from_before_user_mapping_is_issued_again(tmp_path: Path) -> None:
    """Certificates of the provisioning job and the operator made before nats-server mapped certificates to users
    carry no name: the next ``symbi deploy init`` issues them again, with their user's."""
    ensure_tls(tmp_path)
    ca_key = serialization.load_pem_private_key((tmp_path / CA_KEY_FILE).read_bytes(), password=None)
    ca = _cert(tmp_path / CA_CERT_FILE)
    for party in ("provision", "operator"):
        key, unnamed = issue(ca_key, ca, party)  # type: ignore[arg-type]
        files = party_files(tmp_path, party)
        files.key.chmod(0o600)
        files.key.write_bytes(key_pem(key))
        files.cert.chmod(0o600)
        files.cert.write_bytes(cert_pem(unnamed))
    assert parties_due(tmp_path) == ["provision", "operator"]
    assert ensure_tls(tmp_path) == ["provision", "operator"]
    assert _names(_cert(party_files(tmp_path, "provision").cert)) == {ADMIN}


def test_a_service_certificate_from_before_https_is_issued_again(tmp_path: Path) -> None:
    """A deployment made when service certificates were for NATS clients only gets them issued again, with their
    names, by the next ``symbi deploy init`` (which then says to restart those services)."""
    ensure_tls(tmp_path)
    ca_key = serialization.load_pem_private_key((tmp_path / CA_KEY_FILE).read_bytes(), password=None)
    ca = _cert(tmp_path / CA_CERT_FILE)
    key, client_only = issue(ca_key, ca, "lifecycle")  # type: ignore[arg-type]
    files = party_files(tmp_path, "lifecycle")
    files.key.chmod(0o600)
    files.key.write_bytes(key_pem(key))
    files.cert.chmod(0o600)
    files.cert.write_bytes(cert_pem(client_only))
    (tmp_path / CA_CERT_FILE).chmod(0o600)
    assert parties_due(tmp_path) == ["lifecycle"]
    assert ensure_tls(tmp_path) == ["lifecycle"]
    assert set(service_names("lifecycle")) <= _names(_cert(files.cert))
    assert stat.S_IMODE((tmp_path / CA_CERT_FILE).stat().st_mode) == 0o644


def test_a_certificate_ending_soon_of_another_ca_missing_a_name_or_without_its_key_is_issued_again(
    tmp_path: Path,
) -> None:
    ensure_tls(tmp_path)
    ca_key_pem = (tmp_path / CA_KEY_FILE).read_bytes()
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca = _cert(tmp_path / CA_CERT_FILE)
    builder_cert = _cert(party_files(tmp_path, "audit").cert)
    # audit: ending in a week (same CA); policy: signed by another CA; nats: issued without the Kubernetes names.
    soon = (
        x509.CertificateBuilder()
        .subject_name(builder_cert.subject)
        .issuer_name(ca.subject)
        .public_key(builder_cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=7))
        .sign(ca_key, builder_cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    party_files(tmp_path, "audit").cert.write_bytes(cert_pem(soon))
    other_key, other_ca = new_ca()
    _, foreign = issue(other_key, other_ca, "policy")
    party_files(tmp_path, "policy").cert.write_bytes(cert_pem(foreign))
    _, narrow = issue(ca_key, ca, NATS_PARTY, server_names=("nats", "localhost"))  # type: ignore[arg-type]
    party_files(tmp_path, NATS_PARTY).cert.write_bytes(cert_pem(narrow))

    # context: its key replaced by another (the certificate would not match it); scheduler: its key gone.
    other, _ = new_ca()
    party_files(tmp_path, "context").key.chmod(0o600)
    party_files(tmp_path, "context").key.write_bytes(key_pem(other))
    party_files(tmp_path, "scheduler").key.unlink()

    assert sorted(ensure_tls(tmp_path)) == sorted(["audit", "context", "policy", "scheduler", NATS_PARTY])
    for party in ("audit", "policy", NATS_PARTY):
        cert = _cert(party_files(tmp_path, party).cert)
        cert.verify_directly_issued_by(ca)
        assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    assert (tmp_path / CA_KEY_FILE).read_bytes() == ca_key_pem, "the CA is kept"


def test_a_ca_without_its_key_is_refused_not_replaced(tmp_path: Path) -> None:
    ensure_tls(tmp_path)
    ca = (tmp_path / CA_CERT_FILE).read_bytes()
    (tmp_path / CA_KEY_FILE).unlink()
    with pytest.raises(TlsError, match=r"tls-ca\.key is missing"):
        ensure_tls(tmp_path)
    assert (tmp_path / CA_CERT_FILE).read_bytes() == ca
    other_key, _ = new_ca()
    (tmp_path / CA_KEY_FILE).write_bytes(key_pem(other_key))
    with pytest.raises(TlsError, match="is not the key of"):
        ensure_tls(tmp_path)


def test_symbi_deploy_init_says_why_it_refuses_a_ca_without_its_key(tmp_path: Path) -> None:
    directory = tmp_path / "deploy"
    args = ["deploy", "init", str(directory), "--uid", str(os.getuid())]
    assert CliRunner().invoke(app, args).exit_code == 0
    (directory / CA_KEY_FILE).unlink()
    done = CliRunner(env={"COLUMNS": "1000"}).invoke(app, args)
    assert done.exit_code == 1
    assert "tls-ca.key is missing" in done.output
    assert "Traceback" not in done.output


def test_symbi_deploy_init_names_what_to_restart_after_a_renewal(tmp_path: Path) -> None:
    directory = tmp_path / "deploy"
    args = ["deploy", "init", str(directory), "--uid", str(os.getuid())]
    runner = CliRunner(env={"COLUMNS": "1000"})
    first = runner.invoke(app, args)
    assert first.exit_code == 0
    assert "new TLS certificates" not in first.output  # a new deployment: nothing runs yet
    for party in (NATS_PARTY, "policy", "provision"):
        party_files(directory, party).cert.unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "new TLS certificates for: nats, policy, provision;" in again.output
    assert "deploy/compose.sh restart nats policy policy-2`" in again.output
    assert "new TLS certificates" not in runner.invoke(app, args).output  # all good again


def test_the_containers_get_the_files_and_the_operator_keeps_its_own(tmp_path: Path) -> None:
    """With ``uid``, each container party's directory is handed to the containers' user; the operator's stays
    the caller's (it is used on the operator's machine, never mounted)."""
    if os.geteuid() != 0:
        pytest.skip("handing files to another uid needs root")
    ensure_tls(tmp_path, uid=10001)
    for party in PARTIES:
        files = party_files(tmp_path, party)
        owner = 0 if party == "operator" else 10001
        assert {files.directory.stat().st_uid, files.key.stat().st_uid, files.cert.stat().st_uid} == {owner}, party
