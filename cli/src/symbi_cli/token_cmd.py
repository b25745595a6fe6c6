"""``symbi token``: issue, revoke and list operator tokens for the services' HTTP APIs.

Tokens are signed by the operator-token issuer key in ``<home>/operator/`` (next to the root key,
never given to a service). ``issue`` prints the token once and records its claims (never the token)
in ``<home>/operator/tokens.jsonl``; ``revoke`` writes a revocation signed by the issuer to the
``OPERATOR_REVOCATIONS`` KV bucket with the operator's NATS credential, and every service refuses the
token within moments. The bucket is append-only in effect: a revocation stays, whatever is written after it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated

import msgspec
import nats
import typer
from rich.console import Console
from rich.table import Table
from symbi_common.crypto import Verifier
from symbi_common.errors import SymbiError
from symbi_common.keyring import REVOKED, KeyRegistry
from symbi_common.nats_client import server_options
from symbi_common.operator_revocations import Revocations, open_revocations_bucket
from symbi_common.operator_tokens import (
    ROLES,
    OperatorClaims,
    default_operator_dir,
    encode_revocation,
    issue_token,
    load_issuer_key,
    sign_revocation,
)

from symbi_cli.events import operator_url

LEDGER_FILE = "tokens.jsonl"
_TTL_RE = re.compile(r"^(\d+)([smhd]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}

token_app = typer.Typer(help="Issue, revoke and list operator tokens (roles: admin, operator, auditor).")

HomeOption = Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime home of `symbi up`.")]


def parse_ttl(text: str) -> int:
    """``3600``, ``30m``, ``12h`` or ``7d`` in seconds."""
    m = _TTL_RE.match(text.strip())
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 30m, 12h or 7d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _ledger(home: Path) -> Path:
    return default_operator_dir(home / "keys") / LEDGER_FILE


def record_issued(home: Path, claims: OperatorClaims) -> None:
    """Append ``claims`` (not the token) to ``<home>/operator/tokens.jsonl`` (0600)."""
    path = _ledger(home)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as fh:
        fh.write(msgspec.json.encode(claims) + b"\n")


def issued(home: Path) -> list[OperatorClaims]:
    try:
        lines = _ledger(home).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    return [msgspec.json.decode(line, type=OperatorClaims) for line in lines if line.strip()]


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/] {message}")
    return typer.Exit(1)


@token_app.command("issue")
def issue_command(
    name: Annotated[str, typer.Option("--name", help="The operator's name (the Cedar principal Operator::<name>).")],
    role: Annotated[str, typer.Option("--role", help=f"One of {', '.join(ROLES)}.")],
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: seconds, or 30m, 12h, 7d.")] = "24h",
    home: HomeOption = Path(".symbi"),
) -> None:
    """Issue a token and print it (only once: it is not stored)."""
    try:
        issuer = load_issuer_key(default_operator_dir(home / "keys"))
        token, claims = issue_token(issuer, name=name, role=role, ttl_s=parse_ttl(ttl))
    except SymbiError as err:
        raise _fail(str(err)) from None
    record_issued(home, claims)
    expires = dt.datetime.fromtimestamp(claims.exp, dt.UTC).isoformat(timespec="seconds")
    Console(stderr=True).print(f"token {claims.tid} for {claims.sub} ({claims.role}), expires {expires}")
    typer.echo(token)


async def _revoke(url: str, home: Path, token_id: str, reason: str) -> None:
    issuer = load_issuer_key(default_operator_dir(home / "keys"))
    nc = await nats.connect(**server_options(url), connect_timeout=5, allow_reconnect=False)
    try:
        kv = await open_revocations_bucket(nc.jetstream())
        await kv.put(token_id, encode_revocation(sign_revocation(issuer, token_id, reason=reason)))
    finally:
        await nc.drain()


async def _revoked(url: str, home: Path) -> set[str]:
    """The revoked token ids as the services see them: every entry of the bucket an issuer of the home's key
    registry signed (a later entry of the same key does not count)."""
    document = KeyRegistry.load(home / "keys").document
    issuers = {i.key_id: Verifier(i.public_key) for i in document.operator_issuers if i.status != REVOKED}
    revocations = Revocations(issuers)
    nc = await nats.connect(**server_options(url), connect_timeout=5, allow_reconnect=False)
    try:
        await asyncio.wait_for(revocations.follow(nc.jetstream(), once=True), timeout=10)
        return revocations.revoked
    finally:
        await nc.drain()


@token_app.command("revoke")
def revoke_command(
    token_id: Annotated[str, typer.Argument(help="The token id (`symbi token list`).")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the record.")] = "",
    home: HomeOption = Path(".symbi"),
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="Default: the operator URL of `symbi up`.")] = None,
) -> None:
    """Revoke a token: every service refuses it (401) within moments."""
    if not re.fullmatch(r"[0-9a-f]{32}", token_id):
        raise _fail(f"{token_id!r} is not a token id (32 hex digits, see `symbi token list`)")
    try:
        asyncio.run(_revoke(nats_url or operator_url(home), home, token_id, reason))
    except (SymbiError, OSError, nats.errors.Error) as err:
        raise _fail(f"the revocation was not stored: {err}") from None
    Console().print(f"token {token_id} revoked")


@token_app.command("list")
def list_command(
    home: HomeOption = Path(".symbi"),
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="Default: the operator URL of `symbi up`.")] = None,
) -> None:
    """The tokens issued from this home, with their state (revocations read from NATS when it answers)."""
    console = Console()
    try:
        revoked: set[str] | None = asyncio.run(_revoked(nats_url or operator_url(home), home))
    except (OSError, nats.errors.Error, TimeoutError, SymbiError) as err:
        revoked = None
        console.print(f"[yellow]revocations unknown (NATS or the key registry cannot be read: {err!r})[/]")
    table = Table(title=f"operator tokens issued from {home}")
    for column in ("id", "name", "role", "issued", "expires", "state"):
        table.add_column(column)
    now = dt.datetime.now(dt.UTC).timestamp()
    for c in issued(home):
        state = "revoked" if revoked and c.tid in revoked else "expired" if c.exp <= now else "valid"
        if revoked is None and state == "valid":
            state = "valid?"
        stamp = [dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") for t in (c.iat, c.exp)]
        table.add_row(c.tid, c.sub, c.role, *stamp, state)
    console.print(table)
