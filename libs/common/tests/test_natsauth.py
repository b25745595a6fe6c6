"""NATS users and permissions: generated config is valid for the real nats-server and matches deploy/."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from symbi_cli.deploy_tls import ensure_tls
from symbi_cli.nats_server import find_nats_server
from symbi_common.entitlements import AGGREGATE_READERS, SERVICE_SUBJECTS
from symbi_common.errors import ConfigError
from symbi_common.nats_client import server_options, with_credentials, without_credentials
from symbi_common.natsauth import (
    ADMIN,
    OPERATOR,
    authorization_config,
    datakey_types,
    deployment_authorization_config,
    inbox_prefix,
    nats_users,
    publish_allow,
    subscribe_allow,
)

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "nats"


def test_each_service_publishes_only_its_own_aggregates() -> None:
    for service, subjects in SERVICE_SUBJECTS.items():
        events = [p for p in publish_allow(service) if p.startswith("evt.")]
        assert events == list(subjects)
        assert subscribe_allow(service)[:2] == [f"cmd.{service}.>", f"_INBOX_{service}.>"]
        # Beyond: only the sandbox-agent, the replies to its agents' requests and the bus's advisories.
        assert not subscribe_allow(service)[2:] or service == "sandbox-agent"
    # The operator writes no events or data keys; only revocations of operator tokens (`symbi token revoke`)
    # and sealed secrets (`symbi secrets`), which no service may write.
    assert not [p for p in publish_allow(OPERATOR) if p.startswith(("evt.", "snap."))]
    assert [p for p in publish_allow(OPERATOR) if p.startswith("$KV.")] == [
        "$KV.OPERATOR_REVOCATIONS.>",
        "$KV.SECRETS.>",
    ]
    for service in SERVICE_SUBJECTS:
        assert not [p for p in publish_allow(service) if p.startswith(("$KV.SECRETS.", "$KV.>"))]
    # Nor any command: the CLI sends none over NATS.
    assert not [p for p in publish_allow(OPERATOR) if p.startswith(("cmd.", ">"))]


def test_only_admin_may_manage_streams() -> None:
    for user in [*SERVICE_SUBJECTS, OPERATOR]:
        allowed = publish_allow(user)
        assert "$JS.API.>" not in allowed, user
        # The one exception: the operator drops dead letters (`symbi bus dlq replay|purge`), nothing else.
        dead = {"$JS.API.STREAM.PURGE.DEADLETTER", "$JS.API.STREAM.MSG.DELETE.DEADLETTER"}
        for verb in ("CREATE", "UPDATE", "DELETE", "PURGE"):
            found = [p for p in allowed if p.startswith(f"$JS.API.STREAM.{verb}") and p not in dead]
            assert not found, (user, verb)
        assert not [p for p in allowed if p.startswith("$JS.API.STREAM.MSG.DELETE") and p not in dead], user
        assert not [p for p in allowed if p in dead] or user == OPERATOR
        # Data keys: only its own aggregates' (the audit service crypto-shreds any on erasure).
        own = {p for p in allowed if p.startswith("$KV.DATAKEYS.")}
        if user == "audit":
            assert own == {"$KV.DATAKEYS.audit.>", "$KV.DATAKEYS.>"}
        elif user == "sandbox-agent":  # and the data keys of messages between agents
            expected = {p.replace("evt.", "$KV.DATAKEYS.", 1) for p in SERVICE_SUBJECTS[user]}
            assert own == {*expected, "$KV.DATAKEYS.message.>"}
        elif user != OPERATOR:
            assert own == {p.replace("evt.", "$KV.DATAKEYS.", 1) for p in SERVICE_SUBJECTS[user]}
    assert publish_allow(ADMIN) == ["$JS.API.>", "registry.version"]  # provisioning publishes the keyring's version
    assert "$KV.SCHEDULER.>" in publish_allow("scheduler")
    assert "$KV.SCHEDULER.>" not in publish_allow("sandbox-agent")


def test_each_user_reads_only_its_own_inboxes_and_replies_only_to_requests_it_received() -> None:
    """Another user's replies and JetStream deliveries go to that user's inboxes (``_INBOX_<user>``): no service
    may subscribe to the shared ``_INBOX.>`` or another's, nor publish to any inbox (``allow_responses`` only).
    The people's credentials (operator, admin) also read ``_INBOX.>``, for tools like the NATS CLI."""
    for user in nats_users():
        inboxes = [s for s in subscribe_allow(user) if s.startswith("_INBOX")]
        people = ["_INBOX.>"] if user in (OPERATOR, ADMIN) else []
        assert inboxes == [f"{inbox_prefix(user)}.>", *people], user
        assert not [p for p in publish_allow(user) if p.startswith("_INBOX") or p == ">"], user
    config = authorization_config({u: "pw" for u in nats_users()})
    assert config.count('"allow_responses": true') == len(nats_users())
    assert server_options(with_credentials("nats://127.0.0.1:4222", "context", "pw"))["inbox_prefix"] == (
        "_INBOX_context"
    )
    assert "inbox_prefix" not in server_options("nats://127.0.0.1:4222")  # no user: no permissions either


def test_deployment_users_file_is_generated_from_the_code() -> None:
    text = (DEPLOY / "users.conf").read_text()
    assert text.split("\n", 1)[1] == deployment_authorization_config()


@pytest.mark.parametrize("config", ["generated", "deploy"])
def test_configs_are_valid_for_nats_server(tmp_path: Path, config: str) -> None:
    env = dict(os.environ)
    if config == "generated":
        path = tmp_path / "auth.conf"
        path.write_text(authorization_config({u: f"pw-{u}" for u in nats_users()}))
    else:  # the compose stack's, with its /tls mount at the TLS material `symbi deploy init` writes
        ensure_tls(tmp_path)
        path = tmp_path / "nats.conf"
        path.write_text((DEPLOY / "nats.conf").read_text().replace('"/tls/', f'"{tmp_path}/tls/nats/'))
        (tmp_path / "users.conf").write_text((DEPLOY / "users.conf").read_text())
        env["NATS_SERVER_NAME"] = "test"
        for user in nats_users():
            env["NATS_" + user.upper().replace("-", "_") + "_PASSWORD"] = "secret"
    done = subprocess.run(
        [str(find_nats_server()), "-c", str(path), "-t"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_credentials_in_urls() -> None:
    url = with_credentials("nats://127.0.0.1:4222", "sandbox-agent", "p@ss/word")
    assert url == "nats://sandbox-agent:p%40ss%2Fword@127.0.0.1:4222"
    assert without_credentials(url) == "nats://127.0.0.1:4222"


def test_server_options_send_the_credentials_to_every_member() -> None:
    one = with_credentials("nats://127.0.0.1:4222", "audit", "p@ss/word")
    assert server_options(one) == {
        "servers": ["nats://127.0.0.1:4222"],
        "user": "audit",
        "password": "p@ss/word",
        "inbox_prefix": "_INBOX_audit",
    }
    many = ",".join(with_credentials(f"nats://127.0.0.1:{p}", "audit", "pw") for p in (4222, 4223))
    assert server_options(many + ",nats://127.0.0.1:4224") == {
        "servers": ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"],
        "user": "audit",
        "password": "pw",
        "inbox_prefix": "_INBOX_audit",
    }
    assert without_credentials(many) == "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
    assert server_options("nats://127.0.0.1:4222") == {"servers": ["nats://127.0.0.1:4222"]}


def test_server_options_refuse_what_cannot_be_meant() -> None:
    with pytest.raises(ConfigError, match=r"nats\.url.*no NATS URL"):
        server_options(" , ")
    mixed = (
        with_credentials("nats://127.0.0.1:4222", "audit", "a")
        + ","
        + with_credentials("nats://127.0.0.1:4223", "policy", "b")
    )
    with pytest.raises(ConfigError, match="different users"):
        server_options(mixed)


def test_datakey_types_are_the_keys_a_service_may_hold() -> None:
    """Sealed to it (the types it reads) or written by it (its DATAKEYS permissions); the audit service and
    anything that is not a service follow every key."""
    assert datakey_types("audit") is None
    assert datakey_types("operator") is None
    assert datakey_types("no-such-service") is None
    for service in SERVICE_SUBJECTS:
        types = datakey_types(service)
        if service == "audit":
            continue
        assert types is not None
        for aggregate_type, readers in AGGREGATE_READERS.items():
            assert (aggregate_type in types) == (service in readers), (service, aggregate_type)
    # A key type no event subject covers, held by the service that writes it:
    assert "message" in (datakey_types("sandbox-agent") or ())
    # The per-task keys reach only the services that read tasks and executions:
    assert "task" not in (datakey_types("lifecycle") or ())
    assert "execution" not in (datakey_types("policy") or ())


def test_a_url_carries_its_clients_tls_files(tmp_path: Path) -> None:
    """A deployment's operator URL names the operator's TLS files (``?tls_ca=…&tls_cert=…&tls_key=…``): they
    switch TLS on for it, like the ``[nats]`` settings, and are not taken as part of a server's address."""
    ensure_tls(tmp_path)
    files = {
        k: str(tmp_path / "tls" / "operator" / f)
        for k, f in (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem"))
    }
    query = f"tls_ca={files['ca']}&tls_cert={files['cert']}&tls_key={files['key']}"
    options = server_options(f"tls://operator:pw@127.0.0.1:4222?{query}")
    assert options["servers"] == ["tls://127.0.0.1:4222"]
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED
    assert "tls" not in server_options("tls://operator:pw@127.0.0.1:4222")
    settings_tls = server_options("tls://a:pw@127.0.0.1:4222", tls_ca=files["ca"])
    assert isinstance(settings_tls["tls"], ssl.SSLContext)


@pytest.mark.parametrize(
    ("url", "settings", "message"),
    [
        ("tls://a:pw@h:4222?tls_cafile=x", {}, "unknown parameter 'tls_cafile'"),
        ("tls://a:pw@h:4222?tls_ca=x&tls_ca=y", {}, "given twice"),
        ("tls://a:pw@h:4222?tls_ca=x,tls://a:pw@g:4222?tls_ca=y", {}, "different TLS files"),
        ("tls://a:pw@h:4222?tls_ca=x", {"tls_ca": "y"}, "both in the NATS URL and in the"),
        ("tls://a:pw@h:4222?tls_cert=x", {}, "needs tls_ca"),
        ("tls://a:pw@h:4222", {"tls_key": "k"}, "needs tls_ca"),
        ("tls://a:pw@h:4222?tls_ca=/nonexistent/ca.pem", {}, "cannot load the NATS TLS files"),
    ],
)
def test_tls_files_given_wrongly_are_refused(url: str, settings: dict[str, str], message: str) -> None:
    """Never a connection that quietly goes without TLS or without its certificate."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        server_options(url, **settings)
