"""``symbi audit``: export the audit log and verify it offline.

``symbi audit export`` writes every stored event of the ``EVENTS`` stream, byte for byte, as JSON
Lines (``{"sequence", "subject", "data": base64}``) and the latest signed checkpoint of the ``AUDIT``
stream as a C2SP signed note. ``symbi audit verify`` checks such an export without any data key and
without a running system: every signature, that each signing key may write its subject, every
per-aggregate hash chain and version sequence, stream sequence continuity, the checkpoint's
signature by the audit service's key, and that the RFC 6962 root over the log's first ``size``
events is the one the checkpoint signs. It needs only the public half of the keyring (``root.pub``,
``registry.json`` and its signature). Exit status: 0 verified, 1 findings, 2 unusable input.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path
from typing import Annotated

import msgspec
import nats
import nats.errors
import typer
from rich.console import Console
from symbi_audit.export import latest_checkpoint, stored_events
from symbi_audit.offline import OfflineReport, export_line, read_export, verify_export
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.natsauth import without_credentials

from symbi_cli.events import DEFAULT_HOME, operator_url

audit_app = typer.Typer(help="Export the audit log and verify it offline.", no_args_is_help=True)


async def export_log(nats_url: str, out: Path, checkpoint_out: Path | None) -> tuple[int, int | None]:
    """Write the log (and the latest checkpoint); returns (events written, checkpoint size or None).

    The checkpoint is read first, so the log written after it always covers it.
    """
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        note = await latest_checkpoint(nc)
        count = 0
        with open(out, "wb") as fh:  # noqa: ASYNC230 - a CLI writing its one output file; nothing else runs
            async for batch in stored_events(nc):
                fh.write(b"".join(export_line(m) for m in batch))
                count += len(batch)
    finally:
        await nc.drain()
    size = None
    if note is not None and checkpoint_out is not None:
        with open(checkpoint_out, "w") as fh:  # noqa: ASYNC230 - as above
            fh.write(note)
        size = int(note.split("\n")[1])
    return count, size


def _print_report(console: Console, report: OfflineReport, as_json: bool) -> None:
    if as_json:
        cp = report.checkpoint
        doc = {
            "ok": report.ok,
            "events": report.events,
            "root": base64.b64encode(report.root).decode(),
            "checkpoint": None if cp is None else {"origin": cp.origin, "size": cp.size},
            "findings": report.findings,
        }
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        return
    for f in report.findings:
        where = f"sequence {f.sequence} {f.subject}".strip() if f.sequence else "checkpoint"
        console.print(f"[red]✗ {f.kind}[/] at {where}: {f.reason}", highlight=False, soft_wrap=True)
    cp = report.checkpoint
    against = f"checkpoint {cp.origin} size {cp.size}" if cp else "no valid checkpoint"
    if report.ok:
        console.print(f"[green]✓ {report.events} events verified against {against}[/]", highlight=False)
    else:
        console.print(f"[red]{len(report.findings)} findings in {report.events} events ({against})[/]", highlight=False)


@audit_app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the log (JSON Lines).")] = Path(
        "audit-log.jsonl"
    ),
    checkpoint_out: Annotated[
        Path | None, typer.Option("--checkpoint-out", help="Where to write the latest signed checkpoint.")
    ] = None,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime directory of `symbi up`.")] = (
        DEFAULT_HOME
    ),
    nats_url: Annotated[
        str | None,
        typer.Option("--nats-url", envvar="SYMBI_NATS_URL", help="Default: the running `symbi up`'s operator URL."),
    ] = None,
) -> None:
    """Export every stored event and the latest signed checkpoint."""
    console = Console(highlight=False, stderr=True)
    nats_url = nats_url or operator_url(home)
    checkpoint_out = checkpoint_out or out.with_suffix(".checkpoint")
    try:
        count, size = asyncio.run(export_log(nats_url, out, checkpoint_out))
    except (OSError, nats.errors.Error, SymbiError) as err:
        console.print(f"[red]symbi audit: cannot export from {without_credentials(nats_url)}: {err}[/]")
        raise typer.Exit(2) from None
    console.print(f"wrote {count} events to {out}", highlight=False)
    if size is None:
        console.print("[yellow]no checkpoint has been published yet; none written[/]")
    else:
        console.print(f"wrote checkpoint (tree size {size}) to {checkpoint_out}", highlight=False)


@audit_app.command("verify")
def verify_command(
    log: Annotated[Path, typer.Argument(help="An exported log (JSON Lines from `symbi audit export`).")],
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="A signed checkpoint note to check the tree root against.")
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR", help="Keyring with root.pub and the signed registry."),
    ] = None,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME")] = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Verify an exported log offline: signatures, signers, chains, sequences, checkpoint and tree root."""
    console = Console(highlight=False)
    try:
        registry = KeyRegistry.load(keys_dir or home / "keys")
        note = checkpoint.read_text() if checkpoint is not None else None
        with log.open("rb") as fh:
            report = verify_export(read_export(fh), note, registry)
    except (OSError, SymbiError) as err:
        console.print(f"[red]symbi audit verify: {err}[/]")
        raise typer.Exit(2) from None
    if checkpoint is None and not as_json:
        console.print("[yellow]no --checkpoint: chains and signatures only, the tree root is not checked[/]")
    _print_report(console, report, as_json)
    raise typer.Exit(0 if report.ok else 1)
