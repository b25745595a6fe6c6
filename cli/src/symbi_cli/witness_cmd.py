"""``symbi witness``: a C2SP tlog-witness for the audit log, run by someone other than the operator.

``symbi witness init --dir DIR --name NAME`` creates the witness's own Ed25519 key (mode 0600) and
prints its verifier key (``name+keyid+base64``) for verifiers' ``--witness-key`` and the audit
service's ``[[audit.witnesses]]``. ``symbi witness serve --dir DIR --log ORIGIN=VKEY`` serves
``POST /add-checkpoint`` (https://c2sp.org/tlog-witness): it cosigns (C2SP tlog-cosignature,
``cosignature/v1``) a checkpoint signed by the log's key only if it is consistent with the last one
it cosigned for that origin, which it keeps in its own state file (``DIR/state.json``), written
before it answers. ``symbi audit log-key`` prints the audit log's key to pass as VKEY.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI, Request, Response
from rich.console import Console
from symbi_common.crypto import Signer
from symbi_common.errors import ConfigError, KeyringError
from symbi_common.key_material import load_signer, write_key_file
from symbi_tlog.cosign import WitnessKey, cosign
from symbi_tlog.errors import WitnessRequestMalformed
from symbi_tlog.notes import ED25519_TYPE, key_hash
from symbi_tlog.witness import LogKey, decide, parse_add_checkpoint

witness_app = typer.Typer(help="A tlog witness that cosigns the audit log's checkpoints.", no_args_is_help=True)

KEY_FILE = "witness.key"
NAME_FILE = "witness.name"
STATE_FILE = "state.json"


def parse_log_key(spec: str) -> LogKey:
    """``ORIGIN=<name>+<hex key hash>+<base64(0x01 ‖ Ed25519 key)>`` (a signed-note verifier key)."""
    origin, sep, vkey = spec.partition("=")
    name, sep2, rest = vkey.partition("+")
    hash_hex, sep3, blob = rest.partition("+")
    if not (origin and sep and name and sep2 and sep3):
        raise ConfigError(f"log key {spec!r} is not ORIGIN=<name>+<key hash>+<base64 key>", setting="--log")
    try:
        raw = base64.b64decode(blob, validate=True)
        expected = bytes.fromhex(hash_hex)
    except (binascii.Error, ValueError):
        raise ConfigError(f"log key {spec!r} has a bad key hash or key encoding", setting="--log") from None
    if len(raw) != 33 or raw[:1] != ED25519_TYPE or key_hash(name, raw[1:]) != expected:
        raise ConfigError(f"log key {spec!r} is not a valid Ed25519 note verifier key", setting="--log")
    return LogKey(origin, name, raw[1:])


class WitnessState:
    """The latest cosigned (size, root) per origin, in a JSON file replaced atomically (fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = asyncio.Lock()
        self.latest: dict[str, tuple[int, bytes]] = {}
        if path.exists():
            doc = json.loads(path.read_text())
            self.latest = {o: (int(v["size"]), base64.b64decode(v["root"])) for o, v in doc.items()}

    def save(self) -> None:
        """Replace the file with the current state, crash-safe: a new temporary file (``O_EXCL``, 0600, never a
        name someone else created or linked), written and fsynced, renamed over the old one, then the directory
        fsynced so the rename itself survives a power cut. A crash leaves the old state or the new, never half."""
        doc = {o: {"size": s, "root": base64.b64encode(r).decode()} for o, (s, r) in self.latest.items()}
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def build_witness_app(
    signer: Signer, name: str, logs: Sequence[LogKey], state: WitnessState, clock: float | None = None
) -> FastAPI:
    """The witness's HTTP app: ``POST /add-checkpoint`` as C2SP tlog-witness defines it."""
    by_origin: Mapping[str, list[LogKey]] = {o: [k for k in logs if k.origin == o] for o in {k.origin for k in logs}}
    app = FastAPI(title="Symbi tlog witness", docs_url=None, redoc_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        try:
            parsed = parse_add_checkpoint(await request.body())
        except WitnessRequestMalformed as err:
            return Response(f"{err.message}\n", status_code=400, media_type="text/plain")
        async with state.lock:  # check and persist atomically
            origin = parsed.note.partition("\n")[0]
            decision = decide(parsed, by_origin, state.latest.get(origin))
            if decision.status != 200 or decision.checkpoint is None:
                # The content type exactly as the protocol names it (no charset added for text/x.tlog.size).
                return Response(
                    decision.body, status_code=decision.status, headers={"content-type": decision.content_type}
                )
            cp = decision.checkpoint
            state.latest[cp.origin] = (cp.size, cp.root)
            await asyncio.to_thread(state.save)
        body = parsed.note.partition("\n\n")[0] + "\n"  # with any extension lines, exactly as signed
        line = cosign(body, signer, name, int(clock if clock is not None else time.time()))
        return Response(line, status_code=200, media_type="text/plain; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "witness": name, "logs": sorted(by_origin)}

    return app


def witness_key(directory: Path) -> WitnessKey:
    signer = load_signer(directory / KEY_FILE)
    return WitnessKey((directory / NAME_FILE).read_text().strip(), signer.public_key)


@witness_app.command("init")
def init_command(
    directory: Annotated[Path, typer.Option("--dir", help="The witness's own directory (key and state).")],
    name: Annotated[str, typer.Option("--name", help="The witness name, e.g. witness.example.org/w1.")],
) -> None:
    """Create the witness key (kept if present) and print its verifier key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (directory / KEY_FILE).exists():
        write_key_file(directory / KEY_FILE, Signer.generate().seed(), private=True)
        (directory / NAME_FILE).write_text(name + "\n")
    typer.echo(witness_key(directory).vkey())


@witness_app.command("serve")
def serve_command(
    directory: Annotated[Path, typer.Option("--dir", help="The witness's directory (from `symbi witness init`).")],
    log: Annotated[list[str], typer.Option("--log", help="ORIGIN=VKEY of a log to witness; repeatable.")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 7380,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM, chain included).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The certificate's private key (PEM).")] = None,
) -> None:
    """Serve add-checkpoint until interrupted (over HTTPS with --tls-cert and --tls-key)."""
    console = Console(stderr=True, highlight=False)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    try:
        logs = [parse_log_key(spec) for spec in log]
        signer = load_signer(directory / KEY_FILE)
        name = (directory / NAME_FILE).read_text().strip()
        state = WitnessState(directory / STATE_FILE)
    except (ConfigError, KeyringError, OSError, ValueError) as err:
        console.print(f"[red]symbi witness: {err}[/]")
        raise typer.Exit(2) from None
    scheme = "https" if tls_cert is not None else "http"
    console.print(f"witness {name} for {', '.join(sorted({k.origin for k in logs}))} on {scheme}://{host}:{port}")
    uvicorn.run(
        build_witness_app(signer, name, logs, state),
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(tls_cert) if tls_cert is not None else None,
        ssl_keyfile=str(tls_key) if tls_key is not None else None,
    )
