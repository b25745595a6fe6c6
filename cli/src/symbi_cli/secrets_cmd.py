"""``symbi secrets``: set, list and remove runtime secrets (docs/secrets.md).

The values are sealed here with the secrets key in ``<home>/operator/secrets.key`` and written to the
``SECRETS`` KV bucket with the operator's NATS credential; no service may write that bucket. A value comes
from standard input or ``--file``, never from the command line (it would be in the shell history and in
``ps``); ``list`` shows names, versions, times and keys, never values. The audit service records each change
as ``audit.secret_changed`` (without the value); ``set`` and ``rm`` wait a moment for that record and say so.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import nats
import nats.errors
import typer
from nats.aio.client import Client as NatsClient
from rich.console import Console
from rich.table import Table
from symbi_common.errors import SymbiError
from symbi_common.keyfiles import default_operator_dir
from symbi_common.nats_client import server_options
from symbi_common.secret_records import SecretInfo, check_name
from symbi_common.secret_store import SECRETS_KEY_FILE, KvSecretStore, load_secrets_key
from symbi_common.streams import EVENTS_STREAM, last_on_subject
from symbi_contracts.secrets.events import secret_change_id

from symbi_cli.events import operator_url

secrets_app = typer.Typer(help="Set, list and remove runtime secrets (values never shown).", no_args_is_help=True)

HomeOption = Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime home of `symbi up`.")]
NatsOption = Annotated[str | None, typer.Option("--nats-url", help="Default: the operator URL of `symbi up`.")]
#: How long ``set``/``rm`` wait for the audit service to record the change.
AUDIT_WAIT_S = 10.0


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/] {message}")
    return typer.Exit(1)


def read_value(file: Path | None) -> bytes:
    """The value from ``file``, else standard input (a prompt without echo on a terminal). Trailing newline dropped."""
    if file is not None:
        data = file.read_bytes()
    elif sys.stdin.isatty():
        data = getpass.getpass("value: ").encode()
    else:
        data = sys.stdin.buffer.read()
    return data.removesuffix(b"\n").removesuffix(b"\r")


async def _store(url: str, home: Path) -> tuple[NatsClient, KvSecretStore]:
    key = load_secrets_key(default_operator_dir(home / "keys") / SECRETS_KEY_FILE)
    nc = await nats.connect(**server_options(url), connect_timeout=5, allow_reconnect=False)
    try:
        return nc, await KvSecretStore.open(nc, key)
    except BaseException:
        await nc.close()
        raise


async def wait_audited(nc: NatsClient, kv_sequence: int, timeout: float = AUDIT_WAIT_S) -> int | None:
    """The ``EVENTS`` sequence of the audit record of the change at ``kv_sequence``, or None if none came in time."""
    subject = f"evt.audit.{secret_change_id(kv_sequence)}"
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msg = await last_on_subject(nc, EVENTS_STREAM, subject)
        if msg is not None:
            return msg.sequence
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(0.2)


async def _set(url: str, home: Path, name: str, value: bytes, set_by: str) -> tuple[SecretInfo, int, int | None]:
    nc, store = await _store(url, home)
    try:
        info = await store.set(name, value, set_by=set_by)
        return info, info.revision, await wait_audited(nc, info.revision)
    finally:
        await nc.drain()


async def _remove(url: str, home: Path, name: str) -> tuple[int | None, int | None]:
    nc, store = await _store(url, home)
    try:
        sequence = await store.remove(name)
        return sequence, None if sequence is None else await wait_audited(nc, sequence)
    finally:
        await nc.drain()


async def _list(url: str, home: Path) -> list[SecretInfo]:
    nc, store = await _store(url, home)
    try:
        return await store.list()
    finally:
        await nc.drain()


def _audited(console: Console, audited: int | None) -> None:
    if audited is None:
        console.print(f"[yellow]not audited yet after {AUDIT_WAIT_S:.0f} s: is the audit service running?[/]")
    else:
        console.print(f"audited as audit.secret_changed (event stream sequence {audited})")


@secrets_app.command("set")
def set_command(
    name: Annotated[str, typer.Argument(help="The secret's name, e.g. providers/openai/api_key.")],
    file: Annotated[Path | None, typer.Option("--file", help="Read the value from this file (default: stdin).")] = None,
    set_by: Annotated[str, typer.Option("--by", help="Who sets it, for the record.")] = "operator",
    home: HomeOption = Path(".symbi"),
    nats_url: NatsOption = None,
) -> None:
    """Store a new version of a secret; the value is read from stdin or --file, never from the command line."""
    try:
        bare = check_name(name)
        value = read_value(file)
        info, _, audited = asyncio.run(_set(nats_url or operator_url(home), home, bare, value, set_by))
    except (SymbiError, OSError, nats.errors.Error) as err:
        raise _fail(f"the secret was not stored: {err}") from None
    console = Console()
    console.print(f"secret {info.name} v{info.version} stored (sealed with {info.key_id})")
    _audited(console, audited)


@secrets_app.command("rm")
def rm_command(
    name: Annotated[str, typer.Argument(help="The secret's name.")],
    home: HomeOption = Path(".symbi"),
    nats_url: NatsOption = None,
) -> None:
    """Remove a secret and every stored version of it."""
    try:
        bare = check_name(name)
        sequence, audited = asyncio.run(_remove(nats_url or operator_url(home), home, bare))
    except (SymbiError, OSError, nats.errors.Error) as err:
        raise _fail(f"the secret was not removed: {err}") from None
    if sequence is None:
        raise _fail(f"there is no secret {bare!r}")
    console = Console()
    console.print(f"secret {bare} removed")
    _audited(console, audited)


@secrets_app.command("list")
def list_command(
    home: HomeOption = Path(".symbi"),
    nats_url: NatsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per secret, one per line.")] = False,
) -> None:
    """The stored secrets: names, versions, when and by whom they were set. Never values."""
    try:
        infos = asyncio.run(_list(nats_url or operator_url(home), home))
    except (SymbiError, OSError, nats.errors.Error) as err:
        raise _fail(f"the secrets could not be listed: {err}") from None
    if as_json:
        for info in infos:
            typer.echo(msgspec.json.encode(info).decode())
        return
    table = Table(title="secrets")
    for column in ("name", "version", "set at", "set by", "key"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(info.name, str(info.version), info.set_at, info.set_by, info.key_id)
    Console().print(table)
