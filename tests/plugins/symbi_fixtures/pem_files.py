"""Certificates and keys written as PEM files, the way ``symbi deploy init`` writes a party's (``deploy_tls``), for
tests that need a server or client certificate of their own: another CA's, or one issued with other names."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from symbi_cli.deploy_tls import cert_pem, key_pem


def write_pem_pair(
    directory: Path,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    *,
    cert_name: str = "cert.pem",
    key_name: str = "key.pem",
) -> tuple[Path, Path]:
    """``cert`` and ``key`` in ``directory`` (made if missing), the key owner-only: ``(cert path, key path)``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / cert_name, directory / key_name
    cert_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path
