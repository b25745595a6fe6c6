"""``symbi audit``: export the audit log and verify it offline, against a trust anchor.

``symbi audit export`` reads the latest signed checkpoint of the ``AUDIT`` stream first, then writes
exactly the stored events of the ``EVENTS`` stream that it covers, byte for byte, as JSON Lines
(``{"sequence", "subject", "data": base64}``), and the checkpoint next to them (``<out>.checkpoint``).

``symbi audit verify LOG`` trusts nothing in those files, only the root-signed key registry
(``root.pub``, ``registry.json`` and its signature) and what the verifier is told on the command line:

- the checkpoint (``--checkpoint``, default ``LOG``'s ``.checkpoint`` file) must be signed by the
  audit service's key in the registry and name the expected ``--origin``;
- its tree must cover exactly the exported entries: as many entries as its size, and the RFC 6962
  tree rebuilt from them has its root (so each entry is included at its position, and a deleted tail,
  a deleted aggregate tail, a renumbering or an event moved between aggregates cannot pass);
- ``--previous CHECKPOINT`` (one seen before): no rollback, no fork, no split view;
- ``--witness-key VKEY`` … ``--min-witnesses K``: K of the given witnesses cosigned the checkpoint
  (without these flags: the ``[[audit.witnesses]]`` and ``min_witnesses`` the audit service is configured
  with, as the origin defaults to ``[audit] origin`` — :mod:`symbi_cli.trust`);
  ``--max-age S``: the newest of those cosignatures is at most S seconds old (no stale checkpoint);
- every event: signature, that its key may write its subject, per-aggregate hash chain, versions and
  stream sequences.

No checkpoint is a failure. ``--no-checkpoint`` checks signatures and chains only, and says what it
did not check. Exit status: 0 verified, 1 findings (or no checkpoint), 2 unusable input.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nats
import nats.errors
import typer
from rich.console import Console
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options, without_credentials
from symbi_common.streams import AUDIT_STREAM, EVENTS_STREAM, last_on_subject, read_subject
from symbi_tlog.notes import parse_checkpoint, verifier_key
from symbi_tlog.offline import (
    CHECKPOINT_MISSING,
    CHECKPOINT_SUBJECT,
    OfflineReport,
    audit_key,
    export_line,
    verify_export_file,
)

from symbi_cli.events import DEFAULT_HOME, operator_url
from symbi_cli.trust import (
    ConfigOption,
    MaxAgeOption,
    MinRegistryVersionOption,
    MinWitnessesOption,
    OriginOption,
    RootKeyOption,
    WitnessKeyOption,
    audit_settings,
    trust_anchor,
)

audit_app = typer.Typer(help="Export the audit log and verify it offline.", no_args_is_help=True)

#: Exports smaller than this are verified in this process; larger ones on one process per core.
PARALLEL_BYTES = 4 * 1024 * 1024


async def export_log(nats_url: str, out: Path, checkpoint_out: Path | None) -> tuple[int, int | None]:
    """Write the log (and the latest checkpoint); returns (events written, checkpoint size or None).

    The checkpoint is read first and exactly the events it covers are written, so the export is
    complete for it; without a checkpoint every stored event is written.
    """
    nc = await nats.connect(**server_options(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        msg = await last_on_subject(nc, AUDIT_STREAM, CHECKPOINT_SUBJECT)
        note = None if msg is None else msg.data.decode()
        size = None if note is None else parse_checkpoint(note)[0].size
        count = 0
        with open(out, "wb") as fh:  # noqa: ASYNC230 - a CLI writing its one output file; nothing else runs
            async for batch in read_subject(nc, EVENTS_STREAM, "evt.>"):
                if size is not None:
                    batch = batch[: size - count]
                fh.write(b"".join(export_line(m) for m in batch))
                count += len(batch)
                if size is not None and count >= size:
                    break
    finally:
        await nc.drain()
    if note is not None and checkpoint_out is not None:
        with open(checkpoint_out, "w") as fh:  # noqa: ASYNC230 - as above
            fh.write(note)
    return count, size


def _report_doc(report: OfflineReport) -> dict[str, Any]:
    cp, prev = report.checkpoint, report.previous
    return {
        "ok": report.ok,
        "events": report.events,
        "root": base64.b64encode(report.root).decode(),
        "checkpoint": None if cp is None else {"origin": cp.origin, "size": cp.size},
        "previous": None if prev is None else {"origin": prev.origin, "size": prev.size},
        "findings": report.findings,
        "not_checked": report.not_checked,
        "root_key_id": report.root_key_id,
        "registry_version": report.registry_version,
    }


def _print_report(console: Console, report: OfflineReport, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(_report_doc(report)).decode() + "\n")
        return
    for f in report.findings:
        where = f"sequence {f.sequence} {f.subject}".strip() if f.sequence else (f.subject or "checkpoint")
        console.print(f"[red]✗ {f.kind}[/] at {where}: {f.reason}", highlight=False, soft_wrap=True)
        if f.kind == CHECKPOINT_MISSING:
            console.print(
                "  give the export's checkpoint with --checkpoint, or --no-checkpoint to check chains only",
                highlight=False,
            )
    for what in report.not_checked:
        console.print(f"[bold yellow]NOT CHECKED:[/] {what}", highlight=False, soft_wrap=True)
    console.print(f"key registry v{report.registry_version}, root key {report.root_key_id}", highlight=False)
    cp = report.checkpoint
    against = f"checkpoint {cp.origin} size {cp.size}" if cp else "no trusted checkpoint"
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
        Path | None,
        typer.Option("--checkpoint-out", help="Where to write the signed checkpoint (default: OUT.checkpoint)."),
    ] = None,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime directory of `symbi up`.")] = (
        DEFAULT_HOME
    ),
    nats_url: Annotated[
        str | None,
        typer.Option("--nats-url", envvar="SYMBI_NATS_URL", help="Default: the running `symbi up`'s operator URL."),
    ] = None,
) -> None:
    """Export the latest signed checkpoint and exactly the stored events it covers."""
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
        console.print("[yellow]no checkpoint has been published yet; none written (verify will fail without one)[/]")
    elif count < size:
        console.print(f"[red]the stream holds only {count} of the {size} events the checkpoint covers[/]")
        console.print(f"wrote checkpoint (tree size {size}) to {checkpoint_out}", highlight=False)
        raise typer.Exit(1)
    else:
        console.print(f"wrote checkpoint (tree size {size}) to {checkpoint_out}", highlight=False)


@audit_app.command("verify")
def verify_command(
    log: Annotated[Path, typer.Argument(help="An exported log (JSON Lines from `symbi audit export`).")],
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="The signed checkpoint (default: LOG with suffix .checkpoint)."),
    ] = None,
    previous: Annotated[
        Path | None, typer.Option("--previous", help="A checkpoint seen before: check no rollback, fork or split view.")
    ] = None,
    no_checkpoint: Annotated[
        bool, typer.Option("--no-checkpoint", help="Check signatures and chains only; completeness is NOT checked.")
    ] = False,
    origin: OriginOption = None,
    witness_key: WitnessKeyOption = None,
    min_witnesses: MinWitnessesOption = None,
    max_age: MaxAgeOption = None,
    root_key: RootKeyOption = None,
    min_registry_version: MinRegistryVersionOption = 0,
    config: ConfigOption = None,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="Processes verifying signatures (0: one per core for large logs).")
    ] = 0,
    keys_dir: Annotated[
        Path | None,
        typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR", help="Keyring with root.pub and the signed registry."),
    ] = None,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME")] = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Verify an exported log offline against the pinned log key, its checkpoint and the witnesses."""
    console = Console(highlight=False)
    if checkpoint is None and not no_checkpoint:
        default = log.with_suffix(".checkpoint")
        checkpoint = default if default.exists() else None
    if checkpoint is not None and no_checkpoint:
        raise typer.BadParameter("--checkpoint and --no-checkpoint exclude each other")
    try:
        anchor = trust_anchor(
            KeyRegistry.load(keys_dir or home / "keys"),
            audit_settings(config),
            origin=origin,
            witness_keys=witness_key,
            min_witnesses=min_witnesses,
            max_age=max_age,
            root_key_id=root_key,
            min_registry_version=min_registry_version,
        )
        note = checkpoint.read_text() if checkpoint is not None else None
        seen = previous.read_text() if previous is not None else None
        if workers == 0:
            workers = (os.cpu_count() or 1) if log.stat().st_size >= PARALLEL_BYTES else 1
        with log.open("rb") as fh:
            report = verify_export_file(
                fh, note, anchor, previous=seen, workers=workers, require_checkpoint=not no_checkpoint
            )
    except (OSError, SymbiError) as err:
        console.print(f"[red]symbi audit verify: {err}[/]")
        raise typer.Exit(2) from None
    _print_report(console, report, as_json)
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("log-key")
def log_key_command(
    keys_dir: Annotated[Path | None, typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR")] = None,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME")] = DEFAULT_HOME,
    origin: OriginOption = None,
    config: ConfigOption = None,
) -> None:
    """Print ORIGIN=VKEY of the audit log's active checkpoint key (for `symbi witness serve --log`)."""
    origin = origin or audit_settings(config).origin
    try:
        name, public_key = audit_key(KeyRegistry.load(keys_dir or home / "keys"))
    except SymbiError as err:
        Console(stderr=True).print(f"[red]symbi audit log-key: {err}[/]")
        raise typer.Exit(2) from None
    typer.echo(f"{origin}={verifier_key(name, public_key)}")
