"""A sandbox-agent daemon started with its host's own key (``symbi keys add-host``) runs tasks and signs with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.keyfiles import add_host_key, host_dir, init_keyring
from symbi_common.keyring import KeyRegistry
from symbi_common.settings import load_settings
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, ExecutionExited

from .conftest import Scheduler, agent_env, containers_of, running_agent


@pytest.fixture
def keys_dir(tmp_path: Path, host_id: str) -> Path:
    """The keyring, with a key of its own for this test's host."""
    path = tmp_path / "keys"
    init_keyring(path)
    add_host_key(path, host_id)
    return path


async def test_a_daemon_with_its_hosts_own_key_runs_a_task_and_signs_every_event_with_it(
    docker_client: object,
    nats_url: str,
    keys_dir: Path,
    tmp_path: Path,
    host_id: str,
    scheduler: Scheduler,
    registry: KeyRegistry,
    provisioned: NatsClient,
) -> None:
    own = registry.active_key("sandbox-agent", host_id)
    assert own is not None
    settings = load_settings(env=agent_env(nats_url, host_dir(keys_dir, host_id), host_id, tmp_path / "work"))
    async with running_agent(settings, keyring=keys_dir) as agent:
        task_id = await scheduler.submit(agent.host_id, ["sh", "-c", "cat"], input=b"from the host's key")
        result = await scheduler.result(task_id)
        assert isinstance(result.terminal, ExecutionExited)
        assert result.stdout == b"from the host's key"
        signers = {r.header.signing_key_id for r in await scheduler.store.load("execution", task_id, EXECUTION_CODEC)}
        assert signers == {own.key_id}
        assert registry.host_of(own.key_id) == host_id
    assert not containers_of(docker_client, host_id)  # type: ignore[arg-type]
