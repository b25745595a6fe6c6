"""``symbi keys``: create the keyring and show its public half.

The private halves (``root.key``, ``<service>.key``, ``master.key``) are written with mode 0600 by
:func:`symbi_common.keyring.init_keyring` and never read for display: what is shown comes from the
root-signed registry and ``root.pub``.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from symbi_common.crypto import key_id_for
from symbi_common.errors import KeyringError
from symbi_common.keyring import SERVICE_SUBJECTS, KeyRegistry, init_keyring, read_key_file

DEFAULT_KEYS_DIR = Path(".symbi/keys")

#: Files that hold secrets; each must be readable by its owner only.
PRIVATE_FILES = ("root.key", "master.key", *(f"{name}.key" for name in SERVICE_SUBJECTS))


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One registered signing key, public information only."""

    service: str
    key_id: str
    subjects: tuple[str, ...]
    status: str
    private_file_mode: str


@dataclass(frozen=True, slots=True)
class KeyringSummary:
    """What ``symbi keys show`` prints."""

    keys_dir: Path
    root_key_id: str
    issued_at: str
    keys: tuple[KeyRow, ...]
    master_key_mode: str


def ensure_keyring(keys_dir: Path) -> list[str]:
    """Create whatever is missing of the keyring (idempotent); returns the files created."""
    return init_keyring(keys_dir)


def _mode(path: Path) -> str:
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):04o}"
    except FileNotFoundError:
        return "missing"


def describe_keyring(keys_dir: Path) -> KeyringSummary:
    """Load and verify the registry against ``root.pub``; raises :class:`KeyringError` if it does not verify."""
    root_pub = read_key_file(keys_dir / "root.pub")
    registry = KeyRegistry.load(keys_dir, root_pub)
    doc = registry.document
    rows = tuple(
        KeyRow(
            service=k.service,
            key_id=k.key_id,
            subjects=tuple(k.subjects),
            status=k.status,
            private_file_mode=_mode(keys_dir / f"{k.service}.key"),
        )
        for k in doc.keys
    )
    return KeyringSummary(
        keys_dir=keys_dir,
        root_key_id=key_id_for(root_pub),
        issued_at=doc.issued_at,
        keys=rows,
        master_key_mode=_mode(keys_dir / "master.key"),
    )


def print_summary(console: Console, summary: KeyringSummary) -> None:
    console.print(f"keyring [bold]{summary.keys_dir}[/]  (registry signature verified against root.pub)")
    console.print(f"root key   [cyan]{summary.root_key_id}[/]  (registry issued {summary.issued_at})")
    console.print(f"master key master.key (mode {summary.master_key_mode})")
    table = Table(title="service signing keys")
    table.add_column("service", style="bold")
    table.add_column("key id", style="cyan", no_wrap=True)
    table.add_column("may write", no_wrap=True, min_width=15)
    table.add_column("status")
    table.add_column("mode")
    for row in summary.keys:
        table.add_row(row.service, row.key_id, "\n".join(row.subjects), row.status, row.private_file_mode)
    console.print(table)


keys_app = typer.Typer(help="Create and inspect the keyring (root key, service keys, signed registry, master key).")

KeysDirOption = Annotated[
    Path, typer.Option("--dir", help="Keyring directory.", envvar="SYMBI_KEYS_DIR", show_default=True)
]


@keys_app.command("init")
def keys_init(keys_dir: KeysDirOption = DEFAULT_KEYS_DIR) -> None:
    """Create the keyring, keeping any keys that already exist."""
    console = Console()
    created = ensure_keyring(keys_dir)
    if created:
        console.print(f"created in [bold]{keys_dir}[/]:")
        for name in created:
            what = "key registry + registry.json.sig" if name.startswith("registry") else "private, mode 0600"
            console.print(f"  {name}  ({what})")
        if "root.key" in created:
            console.print("  root.pub  (root public key; every service pins it)")
    else:
        console.print(f"keyring in [bold]{keys_dir}[/] is complete; nothing created")
    print_summary(console, describe_keyring(keys_dir))


@keys_app.command("show")
def keys_show(keys_dir: KeysDirOption = DEFAULT_KEYS_DIR) -> None:
    """Show key ids, services and the subjects each key may write (public information only)."""
    console = Console()
    try:
        summary = describe_keyring(keys_dir)
    except KeyringError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    print_summary(console, summary)
