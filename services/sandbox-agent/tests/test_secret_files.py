"""Secrets reach a sandbox as files on tmpfs, only when policy allows, and nowhere else (docs/secrets.md).

Real Docker (runc, and gVisor through ``runsc``), real NATS with the real secrets store, real Cedar policies.
The values are grepped for in the task's output, every stored event (raw and decrypted) and the daemon's logs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from symbi_common.crypto import AeadKey
from symbi_common.secret_store import SECRETS_KEY_FILE, KvSecretStore, ensure_secrets_key, load_secrets_key
from symbi_common.settings import Settings
from symbi_common.streams import EVENTS_STREAM, RawMessage, read_subject
from symbi_contracts.sandbox_agent.events import ExecutionExited, ExecutionRefused, ExecutionStarted
from symbi_contracts.scheduler.events import CODEC as TASKS
from symbi_sandbox_agent.secret_files import host_secrets

from .conftest import Scheduler, running_agent
from .test_actions import AGENT, BASELINE, register_policies

API_KEY = b"sk-test-5e0c1b9a7d3f24e8"
DB_PASSWORD = b"pw-91f2c7a04b6e"
VALUES = (API_KEY, DB_PASSWORD)

#: The operator's grant: agent-1 may have its two secrets (the baseline permits no secret.read).
GRANT = f"""
@id("agent-1-secrets")
permit(principal == Agent::"{AGENT}", action == Action::"secret.read", resource is Secret)
when {{ [Secret::"providers/openai/api_key", Secret::"db/password", Secret::"not/stored"].contains(resource) }};
"""

SCRIPT = r"""
set -e
f=/symbi/secrets/providers/openai/api_key
echo "api: $(sha256sum $f | cut -c1-64)"
echo "db: $(sha256sum "$DB_PASSWORD_FILE" | cut -c1-64)"
echo "env: $DB_PASSWORD_FILE"
ls -ln $f | awk '{print "perm:", $1, $3}'
if echo x > /symbi/secrets/new 2>/dev/null; then echo write:ALLOWED; else echo write:refused; fi
grep " /symbi/secrets " /proc/mounts | awk '{split($4, o, ","); print "mount:", o[1]}'
env
"""


@pytest.fixture
async def stored_secrets(keys_dir: Path, provisioned: NatsClient) -> KvSecretStore:
    """The secrets key (operator + the sandbox-agent's copy) and the two secrets, set as `symbi secrets set` does."""
    ensure_secrets_key(keys_dir, keys_dir.parent / "operator")
    store = await KvSecretStore.open(provisioned, load_secrets_key(keys_dir.parent / "operator" / SECRETS_KEY_FILE))
    await store.set("providers/openai/api_key", API_KEY)
    await store.set("db/password", DB_PASSWORD)
    return store


async def stored_log(nc: NatsClient) -> list[RawMessage]:
    out: list[RawMessage] = []
    async for batch in read_subject(nc, EVENTS_STREAM, "evt.>"):
        out.extend(batch)
    return out


def files_under(root: str) -> list[Path]:
    path = Path(root)
    return list(path.rglob("*")) if path.exists() else []


def embedded(make: Callable[..., Settings], **extra: str) -> Settings:
    return make(
        SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false", SYMBI_LOG_LEVEL="debug", **extra
    )


def assert_nowhere(blobs: list[bytes], where: str) -> None:
    for value in VALUES:
        assert not any(value in b for b in blobs), f"a secret value is in {where}"


@pytest.mark.parametrize(
    ("tier", "actions", "runtime"),
    [("tier1", False, "runc"), ("tier2", False, "runsc"), ("tier2", True, "runsc-uds")],
)
async def test_allowed_secrets_are_read_only_files_and_in_no_output_event_or_log(
    tier: str,
    actions: bool,
    runtime: str,
    stored_secrets: KvSecretStore,
    make_store: Any,
    scheduler: Scheduler,
    provisioned: NatsClient,
    agent_settings: Callable[..., Settings],
    capfd: pytest.CaptureFixture[str],
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "grant": GRANT})
    async with running_agent(embedded(agent_settings)) as agent:
        task_id = await scheduler.submit(
            agent.host_id,
            ["sh", "-c", SCRIPT],
            tier=tier,
            actions=actions,
            secrets=("vault://providers/openai/api_key",),
            env={"DB_PASSWORD_FILE": "vault://db/password"},
        )
        r = await scheduler.result(task_id)
        left = files_under(host_secrets(agent.daemon.defaults.secrets_root, agent.host_id))
    assert isinstance(r.terminal, ExecutionExited), (r.terminal, r.stderr[-2000:])
    lines = r.stdout.decode().splitlines()
    assert lines[:6] == [
        f"api: {hashlib.sha256(API_KEY).hexdigest()}",
        f"db: {hashlib.sha256(DB_PASSWORD).hexdigest()}",
        "env: /symbi/secrets/db/password",
        "perm: -r-------- 65534",
        "write:refused",
        "mount: ro",
    ]
    assert not left, f"secret files left after the run: {left}"

    [started] = r.of(ExecutionStarted)
    assert started.runtime == runtime
    assert [(s.name, s.version, s.target) for s in started.secret_files] == [
        ("db/password", 1, "/symbi/secrets/db/password"),
        ("providers/openai/api_key", 1, "/symbi/secrets/providers/openai/api_key"),
    ]
    assert [(s.decision.action, s.decision.effect, s.decision.point) for s in started.secret_files] == [
        ("secret.read", "allow", "sandbox-agent.secret_file")
    ] * 2
    assert started.hardening["secrets"] == "/symbi/secrets ro tmpfs, 2 file(s)"

    # Nowhere else: not in the output (the script printed its whole environment), not in any stored event,
    # raw or decrypted, not in the daemon's logs.
    assert_nowhere([r.stdout, r.stderr], "the task's output")
    raw = await stored_log(provisioned)
    assert_nowhere([m.data for m in raw] + [str(m.headers).encode() for m in raw], "the stored event stream")
    decrypted = [msgspec.msgpack.encode(e) for e in r.events]
    decrypted += [msgspec.msgpack.encode(x.event) for x in await scheduler.store.load("task", task_id, TASKS)]
    assert_nowhere(decrypted, "the decrypted events")
    out, err = capfd.readouterr()
    assert "secret files written" in out + err  # the daemon's logs of this very delivery were captured
    assert_nowhere([out.encode(), err.encode()], "the logs")


async def test_a_denied_missing_or_unreadable_secret_refuses_the_task_with_a_typed_reason(
    stored_secrets: KvSecretStore,
    provisioned: NatsClient,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "grant": GRANT})
    # Sealed with a key that is not the runtime's: it must not open, and must not be retried forever.
    foreign = await KvSecretStore.open(provisioned, AeadKey("aes:foreign", b"\x02" * 32))
    await foreign.set("providers/openai/api_key", b"planted")
    async with running_agent(embedded(agent_settings)) as agent:

        async def refused(**kw: Any) -> ExecutionRefused:
            task_id = await scheduler.submit(agent.host_id, ["true"], **kw)
            terminal = (await scheduler.result(task_id)).terminal
            assert isinstance(terminal, ExecutionRefused), terminal
            return terminal

        other_agent = await refused(secrets=("db/password",), agent_id="agent-2")
        baseline_only = await refused(env={"K": "vault://webhooks/github"})
        missing = await refused(secrets=("not/stored",))
        malformed = await refused(secrets=("../etc/passwd",))
        unreadable = await refused(secrets=("providers/openai/api_key",))
    assert other_agent.code == "secret_denied"
    assert 'Secret::"db/password"' in other_agent.reason
    assert other_agent.decision is not None
    assert other_agent.decision.action == "secret.read"
    assert other_agent.decision.effect == "deny"
    assert baseline_only.code == "secret_denied"
    assert missing.code == "secret_missing"
    assert "symbi secrets set not/stored" in missing.reason
    assert malformed.code == "invalid_workload"
    assert unreadable.code == "secrets_unavailable"
    assert "cannot be opened" in unreadable.reason


async def test_a_host_without_the_secrets_key_refuses_tasks_that_need_secrets(
    keys_dir: Path, make_store: Any, scheduler: Scheduler, agent_settings: Callable[..., Settings]
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "grant": GRANT})
    assert not (keys_dir / "sandbox-agent" / SECRETS_KEY_FILE).exists()
    async with running_agent(embedded(agent_settings)) as agent:
        task_id = await scheduler.submit(agent.host_id, ["true"], secrets=("db/password",))
        terminal = (await scheduler.result(task_id)).terminal
        plain = await scheduler.submit(agent.host_id, ["true"])
        plain_terminal = (await scheduler.result(plain)).terminal
    assert isinstance(terminal, ExecutionRefused)
    assert terminal.code == "secrets_unavailable"
    assert isinstance(plain_terminal, ExecutionExited)  # tasks without secrets are not affected


def test_a_planted_secrets_root_is_refused(tmp_path: Path) -> None:
    from symbi_contracts.sandbox_agent.errors import SecretsUnavailable
    from symbi_sandbox_agent.secret_files import check_root

    link = tmp_path / "root"
    link.symlink_to(tmp_path)
    with pytest.raises(SecretsUnavailable):
        check_root(str(link))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(SecretsUnavailable):
        check_root(str(open_dir))
    check_root(str(tmp_path / "fresh"))
    assert oct(os.stat(tmp_path / "fresh").st_mode & 0o777) == "0o700"
