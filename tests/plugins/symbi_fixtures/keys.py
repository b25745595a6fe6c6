"""Keys: a complete keyring per test, each service's signer and data keys, operator tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import Signer
from symbi_common.datakeys import DataKeys, KvDataKeyStore
from symbi_common.keyfiles import init_keyring, load_service_keys
from symbi_common.keyring import KeyRegistry
from symbi_common.operator_tokens import default_operator_dir, issue_token, load_issuer_key


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A complete keyring: one directory per service (signing + wrap key), the signed registry.

    The root key is in ``tmp_path / "operator"``, outside the keyring.
    """
    path = tmp_path / "keys"
    init_keyring(path)
    return path


@pytest.fixture
def registry(keys_dir: Path) -> KeyRegistry:
    return KeyRegistry.load(keys_dir)


@pytest.fixture
def signer_for(keys_dir: Path) -> Callable[[str], Signer]:
    """``signer_for("lifecycle")``: that service's signing key from the keyring."""

    def load(service: str) -> Signer:
        return load_service_keys(keys_dir / service, service).signer

    return load


@pytest.fixture
def datakeys_for(keys_dir: Path, registry: KeyRegistry) -> Callable[[NatsClient, str], Awaitable[DataKeys]]:
    """``await datakeys_for(nc, "audit")``: that service's :class:`DataKeys` (its own wrap key) on ``DATAKEYS``."""

    async def make(client: NatsClient, service: str) -> DataKeys:
        keys = load_service_keys(keys_dir / service, service)
        return DataKeys(await KvDataKeyStore.open(client.jetstream()), keys.wrap, registry, service=service)

    return make


IssueOperatorToken = Callable[..., str]


@pytest.fixture
def issue_operator_token(keys_dir: Path) -> IssueOperatorToken:
    """``issue_operator_token(role="auditor", name="ann", ttl_s=60)``: an operator token from the keyring's issuer."""

    def issue(role: str = "admin", name: str = "test-admin", ttl_s: int = 3600) -> str:
        token, _ = issue_token(load_issuer_key(default_operator_dir(keys_dir)), name=name, role=role, ttl_s=ttl_s)
        return token

    return issue


@pytest.fixture
def operator_headers(issue_operator_token: IssueOperatorToken) -> dict[str, str]:
    """The ``Authorization`` header of an admin operator, for tests that call the services' APIs."""
    return {"Authorization": f"Bearer {issue_operator_token()}"}
