"""Secrets and credentials kept out of where they must not go, and secret files that always go (docs/secrets.md):

- a model provider's credential that cannot be sent in a header is refused by the secret's name, never quoted to
  the sandbox or an event, and an upstream error that quotes the credential has it taken out;
- secret names that cannot all be files (``db`` and ``db/password``) refuse the task once, before policy is asked;
- a non-root sandbox-agent refuses to hand secrets out (as documented), and removal works for a non-root user and
  says so loudly when it cannot.

Real pieces: the HTTPS test provider under a test CA, real NATS and Cedar, real Docker for the refusal, real files
and uids (a child process as ``nobody``) for the secrets directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from structlog.testing import capture_logs
from symbi_common.decisions import Allow, AllowAll, Decision, DecisionRecord, DecisionRequest
from symbi_common.policy.hooks import Enforcer, Verdict
from symbi_common.secret_store import SECRETS_KEY_FILE, KvSecretStore, ensure_secrets_key, load_secrets_key
from symbi_common.settings import Settings
from symbi_contracts.sandbox_agent.errors import InvalidWorkload
from symbi_contracts.sandbox_agent.events import ExecutionRefused
from symbi_sandbox_agent.models.errors import BadCredential, ModelUnavailable, UpstreamFailed
from symbi_sandbox_agent.models.upstream import Upstreams, redact
from symbi_sandbox_agent.models.wiring import model_gateway
from symbi_sandbox_agent.secret_files import (
    DecidedSecret,
    decide_secrets,
    question,
    remove_secret_files,
    write_secret_files,
)

from .conftest import Scheduler, running_agent
from .models_support import API_KEY, MODEL_POLICY, SECRET, DictSecrets, assign, body_of, caller, chat, models_settings
from .models_support import post as post_to
from .test_models_gateway import Upstream, upstream

__all__ = ["upstream"]  # a fixture, used by name
from .test_actions import AGENT, BASELINE, register_policies

NOBODY = 65534


def pieces(value: str) -> list[str]:
    """The parts of a credential a quoting may leave whole (between the characters it escapes)."""
    return [p for p in "".join(c if "\x21" <= c <= "\x7e" else " " for c in value).split() if len(p) >= 6]


def assert_unquoted(text: str, value: str) -> None:
    for piece in pieces(value):
        assert piece not in text, f"the credential (or {piece!r} of it) is in: {text}"


#: Stored credentials an HTTP header cannot carry: each used to reach the HTTP library, whose refusal quoted it.
UNSENDABLE = [
    "sk-inner-newline-0f3b9e\nc2d4a1-rest",
    "sk-inner-nul-7a1c5e\x00b9d2f4-rest",
    "sk-inner-space-91e3c7 5b0a2d-rest",
    "sk-non-ascii-4c2e1f\u00e9a7b3d9-rest",
]


async def test_a_credential_that_cannot_be_sent_is_refused_by_name_and_never_quoted(
    make_store: Any, agent_settings: Callable[..., Settings], upstream: Upstream
) -> None:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "models": MODEL_POLICY})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    async with running_agent(settings) as daemon:
        secrets = DictSecrets({})
        tenants = {"default": {"tokens_per_day": 10_000}}
        gw = model_gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, tenants), secrets)
        assert gw is not None
        task = await assign(await make_store("scheduler"), daemon.host_id)
        for value in UNSENDABLE:
            secrets.values[SECRET] = value.encode()
            with capture_logs() as logs:
                # What a sandbox's OpenAI client is answered (through the egress proxy) ...
                answer = await gw.handle(caller(task), post_to("/v1/chat/completions", chat()))
                body = (await body_of(answer)).decode()
                # ... and what models.complete answers and records in execution.action (the error's message).
                with pytest.raises(ModelUnavailable) as raised:
                    await gw.complete(
                        caller(task), {"model": "test/small", "messages": [{"role": "user", "content": "hi"}]}
                    )
            assert answer.status == 503, body
            error = json.loads(body)["error"]
            assert error["code"] == "unavailable"
            assert SECRET in error["message"]
            assert "symbi secrets set" in error["message"]
            assert isinstance(raised.value, BadCredential)
            assert raised.value.details["secret"] == SECRET
            assert raised.value.details["sent"] is False
            for text in (body, str(raised.value), repr(raised.value.details), repr(logs)):
                assert_unquoted(text, value)
        await gw.drain()
        assert upstream.provider.calls == 0  # nothing was sent
        # A good credential is read again (a refused one is not kept) and reaches the provider.
        secrets.values[SECRET] = API_KEY.encode()
        ok = await gw.handle(caller(task), post_to("/v1/chat/completions", chat()))
        assert ok.status == 200, await body_of(ok)
        assert upstream.provider.authorizations[-1] == f"Bearer {API_KEY}"
        await gw.aclose()


async def test_an_upstream_error_quoting_the_credential_has_it_taken_out(upstream: Upstream) -> None:
    """The second line of defence: were a credential the HTTP library refuses ever sent, its quoting of the header
    reaches neither the sandbox nor an event."""
    value = UNSENDABLE[0]
    upstreams = Upstreams(models_settings(upstream.url, upstream.ca).providers, DictSecrets({SECRET: b"unused"}))
    upstreams._credentials["test"] = (time.monotonic(), value)  # as if read past the first line of defence
    try:
        with pytest.raises(UpstreamFailed) as raised:
            await upstreams.send("test", "chat/completions", b"{}", accept="application/json")
    finally:
        await upstreams.aclose()
    assert "[credential]" in str(raised.value)
    assert_unquoted(str(raised.value), value)
    assert upstream.provider.calls == 0
    # Every form a text may hold it in: as is, quoted in a str or a bytes repr.
    for text in (f"x {value} y", f"x {value!r} y", f"x {value.encode()!r} y", f"{value.upper()} stays"):
        redacted = redact(text, value)
        if text.startswith("x"):
            assert_unquoted(redacted, value)
        else:
            assert redacted == text
    assert redact("no credential", None) == "no credential"


# --- secret names that cannot all be files ---------------------------------------------------------------


class CountingPoint(AllowAll):
    """Allows everything and counts what it was asked (it must be asked nothing)."""

    def __init__(self) -> None:
        self.asked: list[DecisionRequest] = []

    async def decide_batch(self, requests: list[DecisionRequest]) -> list[Decision]:
        self.asked.extend(requests)
        return await super().decide_batch(requests)


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory on tmpfs of the ``nobody`` user's (a secrets root a non-root sandbox-agent would have)."""
    directory = Path(tempfile.mkdtemp(prefix="symbi-test-secrets-", dir="/dev/shm"))
    os.chown(directory, NOBODY, NOBODY)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def decided(name: str) -> DecidedSecret:
    record = DecisionRecord(action="secret.read", effect="allow", policy_version=0)
    return DecidedSecret(name, Verdict(question(AGENT, name), Allow(policies=("test",)), record))


@pytest.mark.parametrize("names", [("db", "db/password"), ("db/password", "db"), ("a", "b", "a/b/c")])
async def test_secret_names_that_cannot_all_be_files_are_refused_before_policy_or_a_write(
    names: tuple[str, ...], tmp_path: Path
) -> None:
    point = CountingPoint()
    with pytest.raises(InvalidWorkload) as refused:
        await decide_secrets(Enforcer.around(point), AGENT, names)
    assert refused.value.code == "invalid_workload"
    assert "cannot both be given" in str(refused.value)
    assert point.asked == []  # policy is not asked about a task that cannot run
    root = tmp_path / "secrets"
    directory = root / "host" / "sandbox"
    with pytest.raises(InvalidWorkload):
        write_secret_files(str(directory), [(decided(n), b"value", 1) for n in names], (NOBODY, NOBODY), str(root))
    assert not directory.exists()  # nothing written


#: The operator's grant of both nested names (the baseline permits no secret.read).
NESTED_GRANT = f"""
@id("agent-1-nested-secrets")
permit(principal == Agent::"{AGENT}", action == Action::"secret.read", resource is Secret)
when {{ [Secret::"db", Secret::"db/password"].contains(resource) }};
"""


async def test_a_task_needing_nested_secret_names_is_refused_once_not_redelivered(
    keys_dir: Path,
    provisioned: NatsClient,
    make_store: Any,
    scheduler: Scheduler,
    agent_settings: Callable[..., Settings],
) -> None:
    ensure_secrets_key(keys_dir, keys_dir.parent / "operator")
    store = await KvSecretStore.open(provisioned, load_secrets_key(keys_dir.parent / "operator" / SECRETS_KEY_FILE))
    await store.set("db", b"db-value-1")
    await store.set("db/password", b"db-password-value-2")
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "grant": NESTED_GRANT})
    settings = agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")
    async with running_agent(settings) as agent:
        task_id = await scheduler.submit(agent.host_id, ["true"], secrets=("db", "db/password"))
        result = await scheduler.result(task_id, timeout=20.0)
    assert isinstance(result.terminal, ExecutionRefused), result.terminal
    assert result.terminal.code == "invalid_workload"
    assert "'db' and 'db/password'" in result.terminal.reason
    assert "db-value-1" not in result.terminal.reason


# --- a non-root host ----------------------------------------------------------------------------------------

#: Run as ``nobody`` (root drops to it once its modules are loaded): write one secret file under the root given, or remove a directory; print what happened.
CHILD = r"""
import json, sys
from symbi_common.decisions import Allow, DecisionRecord
from symbi_common.policy.hooks import Verdict
from symbi_sandbox_agent.secret_files import DecidedSecret, question, remove_secret_files, write_secret_files
import os
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # the modules are loaded (the interpreter is under a directory only root may enter)
what, root, directory = sys.argv[1:4]
if what == "write":
    record = DecisionRecord(action="secret.read", effect="allow", policy_version=0)
    verdict = Verdict(question("agent-1", "db/password"), Allow(policies=("t",)), record)
    secret = DecidedSecret("db/password", verdict)
    try:
        write_secret_files(directory, [(secret, b"nobody-value-3", 1)], (65534, 65534), root)
        print(json.dumps({"written": True}))
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "code": getattr(exc, "code", ""), "message": str(exc)}))
else:
    print(json.dumps({"removed": remove_secret_files(directory)}))
"""


def as_nobody(*args: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    assert lines, done.stderr[-2000:]
    return json.loads(lines[-1]), done.stdout + done.stderr


def test_a_non_root_sandbox_agent_refuses_to_hand_out_secrets(nobody_dir: Path) -> None:
    root, directory = nobody_dir / "root", nobody_dir / "root" / "host" / "sandbox"
    outcome, output = as_nobody("write", str(root), str(directory))
    assert outcome.get("code") == "secrets_unavailable", outcome
    assert "not root" in outcome["message"]
    assert "nobody-value-3" not in output
    assert not directory.exists()


def make_tree(base: Path, owner: int) -> None:
    """A secrets directory as written: files 0400, directories 0500, of ``owner``."""
    (base / "db").mkdir(parents=True)
    (base / "db" / "password").write_bytes(b"tree-value-4")
    (base / "top").write_bytes(b"tree-value-5")
    for path in [base / "db" / "password", base / "top"]:
        os.chown(path, owner, owner)
        path.chmod(0o400)
    for path in [base / "db", base]:
        os.chown(path, owner, owner)
        path.chmod(0o500)


def test_removal_works_for_its_owner_and_is_loud_when_it_cannot(nobody_dir: Path) -> None:
    mine = nobody_dir / "mine"
    make_tree(mine, NOBODY)
    outcome, _ = as_nobody("remove", str(nobody_dir), str(mine))
    assert outcome == {"removed": True}
    assert not mine.exists()  # directories of 0500 did not keep it

    theirs = nobody_dir / "theirs"
    make_tree(theirs, 0)
    outcome, output = as_nobody("remove", str(nobody_dir), str(theirs))
    assert outcome == {"removed": False}
    assert "secret files could not be removed" in output
    assert str(theirs) in output
    assert "tree-value" not in output
    assert theirs.exists()
    assert remove_secret_files(str(theirs))  # root can
    assert not theirs.exists()
    assert remove_secret_files(str(theirs))  # idempotent
