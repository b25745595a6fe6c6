"""``symbi keys``: create the keyring, show its public half, rotate and revoke service keys.

The root key lives in an operator-only directory (``<home>/operator``, 0700) and never in the
keyring that services are given; each service gets ``<keys>/<service>/`` (0700) with its own
signing and wrap keys (0600). Private keys are never read for display: what is shown comes from
the root-signed registry and ``root.pub``.
"""

from __future__ import annotations

import asyncio
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from symbi_common.crypto import key_id_for, wrap_key_id_for
from symbi_common.entitlements import SERVICE_SUBJECTS
from symbi_common.errors import KeyringError
from symbi_common.key_material import read_key_file
from symbi_common.keyfiles import (
    ROOT_KEY_FILE,
    SIGNING_KEY_FILE,
    WRAP_KEY_FILE,
    add_host_key,
    default_operator_dir,
    host_dir,
    init_keyring,
    revoke_key,
    rotate_issuer_key,
    rotate_service_key,
    rotate_wrap_key,
)
from symbi_common.keyring import KeyRegistry
from symbi_common.registry_document import ACTIVE, RETIRED, RegistryChange
from symbi_common.secret_store import ensure_secrets_key

from symbi_cli.keys_live import (
    PUBLISH_ERRORS,
    events_last_sequence,
    operator_nats_url,
    publish_keyring,
    registry_history,
)

DEFAULT_KEYS_DIR = Path(".symbi/keys")

#: Files that hold secrets, relative to the keyring; each must be readable by its owner only.
PRIVATE_FILES = tuple(f"{name}/{file}" for name in SERVICE_SUBJECTS for file in (SIGNING_KEY_FILE, WRAP_KEY_FILE))


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One registered signing key, public information only."""

    service: str
    key_id: str
    wrap_key_id: str
    subjects: tuple[str, ...]
    status: str
    private_file_mode: str
    #: The sandbox host the key is bound to (None: the service's own key).
    host: str | None = None


@dataclass(frozen=True, slots=True)
class KeyringSummary:
    """What ``symbi keys show`` prints."""

    keys_dir: Path
    root_key_id: str
    root_key_mode: str
    version: int
    issued_at: str
    keys: tuple[KeyRow, ...]
    changes: tuple[RegistryChange, ...]
    issuers: tuple[tuple[str, str], ...] = ()  # operator-token issuers: (key id, status)


def ensure_keyring(keys_dir: Path, operator_dir: Path | None = None) -> list[str]:
    """Create whatever is missing of the keyring (idempotent), the secrets key with it; returns what was created."""
    created = init_keyring(keys_dir, operator_dir=operator_dir)
    return [*created, *ensure_secrets_key(keys_dir, operator_dir or default_operator_dir(keys_dir))]


def _mode(path: Path) -> str:
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):04o}"
    except FileNotFoundError:
        return "missing"


def _key_dir(keys_dir: Path, service: str, host: str | None) -> Path:
    """Where a key's private file is: its service's directory, or its sandbox host's."""
    return keys_dir / service if host is None else host_dir(keys_dir, host)


def describe_keyring(keys_dir: Path, operator_dir: Path | None = None) -> KeyringSummary:
    """Load and verify the registry against ``root.pub``; raises :class:`KeyringError` if it does not verify."""
    root_pub = read_key_file(keys_dir / "root.pub")
    registry = KeyRegistry.load(keys_dir, root_pub)
    doc = registry.document
    rows = tuple(
        KeyRow(
            service=k.service,
            key_id=k.key_id,
            wrap_key_id=wrap_key_id_for(k.wrap_public_key) if k.wrap_public_key else "-",
            subjects=tuple(k.subjects),
            status=k.status
            + (f" after seq {k.revoked_after_sequence}" if k.revoked_after_sequence is not None else ""),
            private_file_mode=_mode(_key_dir(keys_dir, k.service, k.host) / SIGNING_KEY_FILE)
            if k.status == "active"
            else "-",
            host=k.host,
        )
        for k in doc.keys
    )
    return KeyringSummary(
        keys_dir=keys_dir,
        root_key_id=key_id_for(root_pub),
        root_key_mode=_mode((operator_dir or default_operator_dir(keys_dir)) / ROOT_KEY_FILE),
        version=doc.version,
        issued_at=doc.issued_at,
        keys=rows,
        changes=tuple(doc.changes),
        issuers=tuple((i.key_id, i.status) for i in doc.operator_issuers),
    )


def print_summary(console: Console, summary: KeyringSummary) -> None:
    console.print(f"keyring [bold]{summary.keys_dir}[/]  (registry signature verified against root.pub)")
    console.print(
        f"root key   [cyan]{summary.root_key_id}[/]  (operator-only root.key, mode {summary.root_key_mode}; "
        f"registry v{summary.version} issued {summary.issued_at})"
    )
    table = Table(title="service keys (one directory per service)")
    table.add_column("service", style="bold")
    table.add_column("signing key", style="cyan", no_wrap=True)
    table.add_column("wrap key", no_wrap=True)
    table.add_column("may write", no_wrap=True, min_width=15)
    table.add_column("status")
    table.add_column("mode")
    for row in summary.keys:
        table.add_row(
            row.service if row.host is None else f"{row.service}\nhost {row.host}",
            row.key_id,
            row.wrap_key_id,
            "\n".join(row.subjects),
            row.status,
            row.private_file_mode,
        )
    console.print(table)
    for key_id, status in summary.issuers:
        console.print(f"operator-token issuer [cyan]{key_id}[/]  {status}")


keys_app = typer.Typer(help="Create, inspect, rotate and revoke keys (offline root key, per-service keys, registry).")

KeysDirOption = Annotated[
    Path, typer.Option("--dir", help="Keyring directory.", envvar="SYMBI_KEYS_DIR", show_default=True)
]
OperatorDirOption = Annotated[
    Path | None,
    typer.Option(
        "--operator-dir",
        envvar="SYMBI_OPERATOR_DIR",
        help="Operator-only directory of root.key (default: ../operator).",
    ),
]


def _fail(exc: KeyringError) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/] {exc}")
    return typer.Exit(1)


@keys_app.command("init")
def keys_init(keys_dir: KeysDirOption = DEFAULT_KEYS_DIR, operator_dir: OperatorDirOption = None) -> None:
    """Create the keyring, keeping any keys that already exist."""
    console = Console()
    try:
        created = ensure_keyring(keys_dir, operator_dir)
    except KeyringError as exc:
        raise _fail(exc) from None
    if created:
        console.print(f"created in [bold]{keys_dir}[/] (private files mode 0600, directories 0700):")
        for name in created:
            console.print(f"  {name}")
    else:
        console.print(f"keyring in [bold]{keys_dir}[/] is complete; nothing created")
    print_summary(console, describe_keyring(keys_dir, operator_dir))


@keys_app.command("show")
def keys_show(keys_dir: KeysDirOption = DEFAULT_KEYS_DIR, operator_dir: OperatorDirOption = None) -> None:
    """Show key ids, services and the subjects each key may write (public information only)."""
    try:
        summary = describe_keyring(keys_dir, operator_dir)
    except KeyringError as exc:
        raise _fail(exc) from None
    print_summary(Console(), summary)


NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        envvar="SYMBI_OPERATOR_NATS_URL",
        help="The operator's NATS URL (default: the one `symbi up` left in <home>/run/, if it runs).",
    ),
]


def _publish(console: Console, keys_dir: Path, nats_url: str | None) -> None:
    """Publish the keyring's new registry version to the running runtime (which applies it live)."""
    url = operator_nats_url(keys_dir, nats_url)
    if url is None:
        console.print(
            "no running runtime found: services use the new version when they start (`symbi up` publishes it)"
        )
        return
    try:
        version = asyncio.run(publish_keyring(url, keys_dir))
    except (KeyringError, *PUBLISH_ERRORS) as exc:
        Console(stderr=True).print(
            f"[red]error:[/] the new registry version is in the key files but was NOT published to the running "
            f"runtime ({exc!r}); run `symbi keys publish` once NATS answers"
        )
        raise typer.Exit(1) from None
    if version is not None:
        console.print(f"registry v{version} published on REGISTRY: running services apply it now")


@keys_app.command("rotate")
def keys_rotate(
    service: Annotated[str, typer.Argument(help="The service whose key to replace.")],
    wrap: Annotated[
        bool, typer.Option("--wrap", help="Replace its X25519 wrap key (data keys get re-sealed) instead.")
    ] = False,
    keys_dir: KeysDirOption = DEFAULT_KEYS_DIR,
    operator_dir: OperatorDirOption = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Give a service a new signing key, or (--wrap) a new wrap key: a new registry version signed by the root key.

    The new private key goes into the service's directory, then the version is published: a running
    service switches to the new key at once. An old signing key retires (events it signed stay valid);
    an old wrap key stays in wrap.old.key until the service has re-sealed its data keys to the new one.
    """
    console = Console()
    try:
        if wrap:
            wrap_id = rotate_wrap_key(keys_dir, service, operator_dir=operator_dir)
            console.print(f"{service}: new wrap key [cyan]{wrap_id}[/] (the old one in wrap.old.key until re-sealed)")
        else:
            before = KeyRegistry.load(keys_dir, read_key_file(keys_dir / "root.pub")).active_key(service)
            key = rotate_service_key(keys_dir, service, operator_dir=operator_dir)
            console.print(f"{service}: new signing key [cyan]{key.key_id}[/]")
            if before is not None:
                console.print(
                    f"the old key {before.key_id} is retired: what it signed stays valid, and so would what it signs"
                    f" next; once {service} signs with the new key, end that: `symbi keys close {before.key_id}`"
                )
    except KeyringError as exc:
        raise _fail(exc) from None
    _publish(console, keys_dir, nats_url)


@keys_app.command("add-host")
def keys_add_host(
    host_id: Annotated[str, typer.Argument(help="The sandbox host's id (its [sandbox] host_id).")],
    keys_dir: Annotated[
        Path,
        typer.Option("--dir", "--keys-dir", help="Keyring directory.", envvar="SYMBI_KEYS_DIR", show_default=True),
    ] = DEFAULT_KEYS_DIR,
    operator_dir: OperatorDirOption = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Give a sandbox host a signing key of its own (a new registry version signed by the root key).

    The key goes into <keys>/sandbox-agent@HOST_ID with a copy of the sandbox-agent's wrap key; it may sign that
    host's events only, and the sandbox-agent daemon started with it must run as HOST_ID. Run it again to replace
    the host's key (the previous one retires). The version is published to a running runtime.
    """
    console = Console()
    try:
        key = add_host_key(keys_dir, host_id, operator_dir=operator_dir)
    except KeyringError as exc:
        raise _fail(exc) from None
    directory = host_dir(keys_dir, host_id)
    console.print(f"host {host_id}: new signing key [cyan]{key.key_id}[/] (may write {', '.join(key.subjects)})")
    console.print(
        f"give host {host_id} the directory {directory} as its SYMBI_KEYS_DIR (and SYMBI_SANDBOX__HOST_ID={host_id})",
        highlight=False,
        soft_wrap=True,
    )
    _publish(console, keys_dir, nats_url)


@keys_app.command("rotate-issuer")
def keys_rotate_issuer(
    revoke: Annotated[
        bool,
        typer.Option(
            "--revoke",
            help="The old issuer key is compromised: revoke it rather than retire it (its revocations stop counting).",
        ),
    ] = False,
    keys_dir: KeysDirOption = DEFAULT_KEYS_DIR,
    operator_dir: OperatorDirOption = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Give the operator a new operator-token issuer key; the old one retires, or with --revoke is revoked (a new
    registry version).

    Every token the old issuer signed is refused from that version on, by running services as soon as it is
    published: issue new ones with `symbi token issue`. This home's own admin token (operator.token) is issued
    anew from the new key.
    """
    from symbi_cli.credentials import write_local_token

    console = Console()
    try:
        new, ended = rotate_issuer_key(keys_dir, operator_dir=operator_dir, compromised=revoke)
    except KeyringError as exc:
        raise _fail(exc) from None
    console.print(f"operator-token issuer: new key [cyan]{new}[/]")
    if ended is not None:
        status = "revoked" if revoke else "retired"
        console.print(f"the old issuer {ended} is {status}: the tokens it signed are refused once this is published")
    path = write_local_token(keys_dir.parent, keys_dir)
    console.print(f"this home's admin token, issued by the new key: {path}")
    _publish(console, keys_dir, nats_url)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The signing key id, e.g. ed25519:0123456789abcdef.")],
    after_sequence: Annotated[
        int | None,
        typer.Option("--after-sequence", min=0, help="Events it signed after this EVENTS stream sequence are refused."),
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Refuse every event it ever signed (compromised since issued).")
    ] = False,
    keys_dir: KeysDirOption = DEFAULT_KEYS_DIR,
    operator_dir: OperatorDirOption = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Revoke a signing key (a new registry version signed by the root key, published to running services)."""
    if (after_sequence is None) == (not from_start):
        Console(stderr=True).print("[red]error:[/] give exactly one of --after-sequence N or --from-start")
        raise typer.Exit(2)
    console = Console()
    try:
        key = revoke_key(keys_dir, key_id, after_sequence=after_sequence, operator_dir=operator_dir)
    except KeyringError as exc:
        raise _fail(exc) from None
    when = "every event it signed" if after_sequence is None else f"events it signed after sequence {after_sequence}"
    console.print(f"revoked {key.key_id} of {key.service}: {when} are now refused")
    _publish(console, keys_dir, nats_url)


@keys_app.command("close")
def keys_close(
    key_id: Annotated[str, typer.Argument(help="A retired signing key id (replaced by `symbi keys rotate`).")],
    keys_dir: KeysDirOption = DEFAULT_KEYS_DIR,
    operator_dir: OperatorDirOption = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """End a retired key's validity at the EVENTS stream's last sequence now: what it signed so far stays valid,
    anything it signs from here is refused. Run it once the service signs with its new key (a rotation switches
    running services at once), so that a retired key that leaked cannot sign new events."""
    key = KeyRegistry.load(keys_dir, read_key_file(keys_dir / "root.pub")).key(key_id)
    if key is None or key.status != RETIRED:
        why = "not in the key registry" if key is None else f"{key.status}, not retired"
        hint = " (rotate first: `symbi keys rotate SERVICE`)" if key is not None and key.status == ACTIVE else ""
        Console(stderr=True).print(f"[red]error:[/] key {key_id} is {why}{hint}")
        raise typer.Exit(1)
    url = operator_nats_url(keys_dir, nats_url)
    if url is None:
        Console(stderr=True).print(
            "[red]error:[/] no running runtime found to read the stream position from; give --nats-url"
        )
        raise typer.Exit(1)
    try:
        last = asyncio.run(events_last_sequence(url))
        closed = revoke_key(keys_dir, key_id, after_sequence=last, operator_dir=operator_dir)
    except KeyringError as exc:
        raise _fail(exc) from None
    except PUBLISH_ERRORS as exc:
        Console(stderr=True).print(f"[red]error:[/] cannot read the EVENTS stream's position: {exc!r}")
        raise typer.Exit(1) from None
    console = Console()
    console.print(f"closed {closed.key_id} of {closed.service}: events it signs after sequence {last} are refused")
    _publish(console, keys_dir, nats_url)


@keys_app.command("publish")
def keys_publish(keys_dir: KeysDirOption = DEFAULT_KEYS_DIR, nats_url: NatsUrlOption = None) -> None:
    """Publish the keyring's registry version to the running runtime's REGISTRY stream, if newer there."""
    console = Console()
    if operator_nats_url(keys_dir, nats_url) is None:
        Console(stderr=True).print("[red]error:[/] no running runtime found; give --nats-url")
        raise typer.Exit(1)
    _publish(console, keys_dir, nats_url)


@keys_app.command("history")
def keys_history(keys_dir: KeysDirOption = DEFAULT_KEYS_DIR, nats_url: NatsUrlOption = None) -> None:
    """Every registry version on the REGISTRY stream (the registry's audit trail), each checked against root.pub:
    signed by the root key, newer than the one before, keeping its changes. Exit 1 if any is not."""
    url = operator_nats_url(keys_dir, nats_url)
    if url is None:
        Console(stderr=True).print("[red]error:[/] no running runtime found; give --nats-url")
        raise typer.Exit(1)
    try:
        entries = asyncio.run(registry_history(url, keys_dir))
    except (KeyringError, *PUBLISH_ERRORS) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc!r}")
        raise typer.Exit(1) from None
    console = Console()
    for entry in entries:
        if entry.problem is not None:
            console.print(f"{entry.sequence:>5} [red]✗ {entry.problem}[/]", highlight=False, soft_wrap=True)
            continue
        changes = ", ".join(f"{c.kind} {c.service} {c.key_id}" for c in entry.changes) or "-"
        console.print(f"{entry.sequence:>5} v{entry.version} [green]✓[/] {changes}", highlight=False, soft_wrap=True)
    if any(e.problem for e in entries):
        raise typer.Exit(1)
