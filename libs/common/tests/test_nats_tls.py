"""TLS to NATS as a configuration switch, once against a real nats-server with a CA made here."""

from __future__ import annotations

import ssl
from pathlib import Path

import nats
import nats.errors
import pytest
from symbi_cli.deploy_tls import NATS_PARTY, ensure_tls, party_files
from symbi_cli.nats_server import NatsServer
from symbi_cli.provisioning import provision_nats_async
from symbi_common.nats_client import client_tls, server_options
from symbi_common.natsauth import tls_config
from symbi_common.service import ServiceRuntime
from symbi_common.settings import load_settings


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """A deployment's TLS material (``symbi deploy init``'s CA, nats-server's certificate, which names
    127.0.0.1, and the policy service's client certificate), as PEM files."""
    ensure_tls(tmp_path)
    server, client = party_files(tmp_path, NATS_PARTY), party_files(tmp_path, "policy")
    return {
        "ca": str(server.ca),
        "server_cert": str(server.cert),
        "server_key": str(server.key),
        "client_cert": str(client.cert),
        "client_key": str(client.key),
    }


async def test_services_reach_nats_over_mutual_tls_and_plain_clients_are_refused(
    tmp_path: Path, pki: dict[str, str], keys_dir: Path
) -> None:
    conf = tmp_path / "tls.conf"
    conf.write_text(tls_config(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"]))
    with NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log", extra_args=("--config", str(conf))) as server:
        url = server.url.replace("nats://", "tls://")
        tls = {"tls_ca": pki["ca"], "tls_cert": pki["client_cert"], "tls_key": pki["client_key"]}
        await provision_nats_async(url, **tls)  # the admin, over TLS too

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
    assert "tls" not in server_options("nats://a:pw@127.0.0.1:4222")
    assert client_tls("") is None
