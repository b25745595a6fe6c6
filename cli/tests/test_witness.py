"""``symbi witness``: the C2SP tlog-witness protocol against a real witness process on loopback, and the
audit service gathering its cosignatures before it publishes a checkpoint."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from nats.aio.client import Client as NatsClient
from symbi_audit.main import build_app
from symbi_cli.audit_cmd import audit_app, export_log
from symbi_common.crypto import Signer
from symbi_common.events import Event, EventCodec
from symbi_common.eventstore import EventStore
from symbi_common.key_material import load_signer
from symbi_common.sealing import NEW_AGGREGATE
from symbi_common.settings import load_settings
from symbi_common.stream_provisioning import provision_streams
from symbi_common.streams import AUDIT_STREAM, last_on_subject
from symbi_fixtures.runtimes import take_free_port
from symbi_tlog.cosign import WitnessKey, verify_cosignatures
from symbi_tlog.merkle import TreeBuilder, consistency_ranges, hashes_for
from symbi_tlog.notes import Checkpoint, sign_checkpoint
from symbi_tlog.offline import CHECKPOINT_SUBJECT
from symbi_tlog.witness import format_add_checkpoint
from typer.testing import CliRunner

NAME = "witness.test/w1"


@dataclass
class Witness:
    exe: str
    dir: Path
    log_spec: str
    env: dict[str, str]
    port: int = field(default_factory=take_free_port)
    proc: subprocess.Popen[bytes] | None = None
    tls: tuple[Path, Path] | None = None
    """(certificate, key): serve HTTPS."""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def key(self) -> WitnessKey:
        return WitnessKey(NAME, load_signer(self.dir / "witness.key").public_key)

    def start(self) -> None:
        argv = [self.exe, "witness", "serve", "--dir", str(self.dir), "--log", self.log_spec, "--port", str(self.port)]
        if self.tls is not None:
            argv += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        verify: Any = ssl.create_default_context(cafile=self.tls[0]) if self.tls is not None else True
        with open(self.dir.parent / "witness.log", "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir.parent / "witness.log").read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the witness did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def witness(tmp_path: Path, symbi_exe: str, keys_dir: Path, cli_env: dict[str, str]) -> Iterator[Witness]:
    directory = tmp_path / "witness"
    init = [symbi_exe, "witness", "init", "--dir", str(directory), "--name", NAME]
    vkey = subprocess.run(init, env=cli_env, capture_output=True, text=True, check=True).stdout.strip()
    spec = subprocess.run(
        [symbi_exe, "audit", "log-key", "--keys-dir", str(keys_dir)],
        env=cli_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    w = Witness(symbi_exe, directory, spec, cli_env)
    assert WitnessKey.parse(vkey) == w.key
    assert (directory / "witness.key").stat().st_mode & 0o777 == 0o600
    w.start()
    try:
        yield w
    finally:
        w.stop()


class Log:
    """A tree of arbitrary leaves, signed as the audit log."""

    def __init__(self, signer: Signer, origin: str = "symbi-audit") -> None:
        self.signer, self.origin = signer, origin
        self.tree = TreeBuilder()
        self.nodes: dict[tuple[int, int], bytes] = {}

    def grow(self, n: int, salt: bytes = b"") -> str:
        for _ in range(n):
            leaf = hashlib.sha256(salt + self.tree.size.to_bytes(8, "big")).digest()
            for level, idx, h in self.tree.append(leaf):
                self.nodes[(level, idx)] = h
        cp = Checkpoint(self.origin, self.tree.size, self.tree.root())
        return sign_checkpoint(cp, self.signer, self.signer.key_id)

    def proof(self, old: int) -> list[bytes]:
        if old in (0, self.tree.size):
            return []
        return hashes_for(consistency_ranges(old, self.tree.size), self.nodes.__getitem__)


def post(w: Witness, old: int, proof: list[bytes], note: str) -> httpx.Response:
    return httpx.post(f"{w.url}/add-checkpoint", content=format_add_checkpoint(old, proof, note), timeout=5)


def test_add_checkpoint_answers_as_the_protocol_says(witness: Witness, keys_dir: Path) -> None:
    audit = load_signer(keys_dir / "audit" / "signing.key")
    log = Log(audit)
    note = log.grow(10)
    # Unknown origin, no trusted signature, malformed, old size above the size.
    assert post(witness, 0, [], Log(audit, "other-log").grow(3)).status_code == 404
    assert post(witness, 0, [], Log(Signer.generate()).grow(3)).status_code == 403
    assert httpx.post(f"{witness.url}/add-checkpoint", content=b"nonsense", timeout=5).status_code == 400
    assert post(witness, 11, [], note).status_code == 400
    # First checkpoint: cosigned.
    answer = post(witness, 0, [], note)
    assert answer.status_code == 200, answer.text
    assert verify_cosignatures(note + answer.text, [witness.key]).valid.keys() == {NAME}
    # Growing without saying from where: 409 with the size the witness is at.
    note = log.grow(7)
    answer = post(witness, 0, [], note)
    assert (answer.status_code, answer.text, answer.headers["content-type"]) == (409, "10\n", "text/x.tlog.size")
    # With a wrong proof: 422; with the right one: cosigned.
    assert post(witness, 10, [bytes(32)] * len(log.proof(10)), note).status_code == 422
    answer = post(witness, 10, log.proof(10), note)
    assert answer.status_code == 200
    assert verify_cosignatures(note + answer.text, [witness.key]).valid.keys() == {NAME}
    # A fork of the same size: 409; a fork that grows from a different history: 422.
    fork = Log(audit)
    fork.grow(17, salt=b"fork")
    assert post(witness, 17, [], fork.grow(0)).status_code == 409
    assert post(witness, 17, fork.proof(17), fork.grow(3)).status_code == 422
    # The state survives a restart: the witness still knows it is at 17.
    witness.stop()
    witness.start()
    answer = post(witness, 0, [], log.grow(2))
    assert (answer.status_code, answer.text) == (409, "17\n")
    assert post(witness, 17, log.proof(17), log.grow(0)).status_code == 200


def test_state_is_replaced_whole_and_private_whatever_lies_in_the_directory(tmp_path: Path) -> None:
    """The state file is written to a fresh temporary file (0600, never one someone planted or linked),
    fsynced, renamed over the old one, and the directory fsynced: a crash leaves the old or the new state."""
    from symbi_cli.witness_cmd import STATE_FILE, WitnessState

    directory = tmp_path / "witness"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("not the witness's")
    (directory / "state.tmp").symlink_to(victim)  # a planted link at the old fixed temporary name
    (directory / f".{STATE_FILE}.planted.tmp").write_text("{}")
    state = WitnessState(directory / STATE_FILE)
    for size in (3, 17):
        state.latest["symbi-audit"] = (size, bytes([size]) * 32)
        state.save()
        path = directory / STATE_FILE
        assert not path.is_symlink()
        assert path.stat().st_mode & 0o777 == 0o600
        assert WitnessState(path).latest == {"symbi-audit": (size, bytes([size]) * 32)}
    assert victim.read_text() == "not the witness's"
    left = sorted(p.name for p in directory.iterdir())
    assert left == sorted([STATE_FILE, "state.tmp", f".{STATE_FILE}.planted.tmp"])  # no temporary file of its own


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "witness.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "witness-cert.pem", directory / "witness-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_the_witness_serves_https_with_tls_cert_and_key(witness: Witness, keys_dir: Path, tmp_path: Path) -> None:
    witness.stop()
    witness.tls = _self_signed(tmp_path)
    witness.start()
    log = Log(load_signer(keys_dir / "audit" / "signing.key"))
    note = log.grow(3)
    answer = httpx.post(
        f"{witness.url}/add-checkpoint",
        content=format_add_checkpoint(0, [], note),
        timeout=5,
        verify=ssl.create_default_context(cafile=witness.tls[0]),
    )
    assert answer.status_code == 200, answer.text
    assert verify_cosignatures(note + answer.text, [witness.key]).valid.keys() == {NAME}
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
        httpx.get(f"http://127.0.0.1:{witness.port}/healthz", timeout=2)
    with pytest.raises(httpx.HTTPError):  # nor is a client that does not trust the certificate let through
        httpx.get(f"{witness.url}/healthz", timeout=2)


class Noted(Event, frozen=True, tag="agent.noted"):
    n: int


CODEC: EventCodec[Noted] = EventCodec([Noted])


async def test_audit_service_publishes_only_witnessed_checkpoints(
    witness: Witness,
    make_store: Callable[..., Any],
    provisioned: NatsClient,
    nats_url: str,
    database_url: str,
    keys_dir: Path,
    tmp_path: Path,
) -> None:
    config = tmp_path / "symbi.toml"
    config.write_text(
        f'[audit]\nmin_witnesses = 1\n[[audit.witnesses]]\nurl = "{witness.url}"\nkey = "{witness.key.vkey()}"\n'
    )
    env = {
        "SYMBI_NATS_URL": nats_url,
        "SYMBI_DATABASE_URL": database_url,
        "SYMBI_KEYS_DIR": str(keys_dir),
        "SYMBI_LOG_LEVEL": "warning",
        "SYMBI_POLICY__ENFORCEMENT": "allow-all",
        "SYMBI_AUDIT__CHECKPOINT_INTERVAL_S": "0.2",
    }
    app = build_app(load_settings(config, env=env))
    async with app.router.lifespan_context(app):
        store: EventStore = await make_store("lifecycle")
        service = app.state.audit

        async def published(size: int) -> str:
            for _ in range(200):
                msg = await last_on_subject(provisioned, AUDIT_STREAM, CHECKPOINT_SUBJECT)
                if msg is not None and msg.data.decode().split("\n")[1] == str(size):
                    return msg.data.decode()
                await asyncio.sleep(0.05)
            raise AssertionError(f"no checkpoint of size {size} published")

        recs = await store.append("agent", "w1", [Noted(n=i) for i in range(5)], CODEC, expected=NEW_AGGREGATE)
        note = await published(recs[-1].sequence)
        assert verify_cosignatures(note, [witness.key]).valid.keys() == {NAME}
        recs = await store.append("agent", "w1", [Noted(n=i) for i in range(4)], CODEC, expected=recs[-1].tip)
        note = await published(recs[-1].sequence)  # the witness needed a consistency proof from 5 to 9
        assert verify_cosignatures(note, [witness.key]).valid.keys() == {NAME}
        # The export verifies demanding the witness; without it, a checkpoint is never published.
        out = tmp_path / "log.jsonl"
        count, size = await export_log(nats_url, out, out.with_suffix(".checkpoint"))
        assert count == size == 9
        args = ["verify", str(out), "--keys-dir", str(keys_dir), "--witness-key", witness.key.vkey()]
        result = CliRunner().invoke(audit_app, [*args, "--min-witnesses", "1"])
        assert result.exit_code == 0, result.output
        witness.stop()
        recs = await store.append("agent", "w1", [Noted(n=1)], CODEC, expected=recs[-1].tip)
        assert await service.runner.wait_for(recs[-1].sequence)
        for _ in range(40):
            if (cp := await service.store.checkpoint()) is not None and cp.size == 10:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert [c.size for c in await service.store.unpublished_checkpoints()] == [10]
        msg = await last_on_subject(provisioned, AUDIT_STREAM, CHECKPOINT_SUBJECT)
        assert msg is not None
        assert msg.data.decode().split("\n")[1] == "9"
    # Everything the operator holds is wiped — the streams and the audit service's database — and the log
    # starts again: the witness, which keeps its own state, has cosigned more than the new log has. Critical.
    witness.start()
    js = provisioned.jetstream()
    for stream in ("EVENTS", "AUDIT"):
        await js.delete_stream(stream)
    await provision_streams(js)  # the operator's admin starts the log again (services never create streams)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP SCHEMA audit CASCADE")
    finally:
        await conn.close()
    app = build_app(load_settings(config, env=env))
    async with app.router.lifespan_context(app):
        store = await make_store("lifecycle")
        await store.append("agent", "w2", [Noted(n=i) for i in range(3)], CODEC, expected=NEW_AGGREGATE)
        guard = app.state.audit_guard
        for _ in range(200):
            await guard.check()
            if "witness_ahead" in guard.critical:
                break
            await asyncio.sleep(0.05)
        assert "cosigned a tree of size 9" in guard.critical["witness_ahead"]
        assert not guard.intact
