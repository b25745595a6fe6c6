"""``symbi events``: read the event stream as an operator would, verifying every event on the way.

``symbi events tail`` prints each stored event's sequence, time, subject, type, producer, aggregate
version and signing key, with its verification against the root-signed key registry: the signature,
that the key may write the subject, and the per-aggregate hash chain and version continuity. No data
key is needed (payloads stay encrypted), so the same check works for someone who may only audit.
``--json`` prints one JSON object per line for scripts; ``--follow`` keeps reading new events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import nats
import nats.errors
import typer
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.console import Console
from symbi_common.consuming import BacklogFetch
from symbi_common.errors import KeyringError
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options, without_credentials
from symbi_common.streams import EVENTS_STREAM, RawMessage
from symbi_tlog.rules import CachedRegistry, LogVerifier, authenticate

DEFAULT_HOME = Path(".symbi")

events_app = typer.Typer(help="Read and verify the event stream.", no_args_is_help=True)


@dataclass(frozen=True, slots=True)
class EventLine:
    """One stored event as seen by a verifier. ``problem`` is empty when every check passed."""

    sequence: int
    subject: str
    stored_at: str
    event_type: str
    producer: str
    aggregate_version: int | None
    signing_key_id: str
    event_id: str
    verified: bool
    problem: str
    problem_code: str


class StreamVerifier:
    """Checks events in stream order with the audit service's rules (:mod:`symbi_tlog.rules`).

    ``partial`` (a ``--last`` window or a subject filter): stream sequences are not checked and an
    aggregate first seen in the middle of its chain is trusted from that event on. Reading the whole
    stream also reports sequence gaps (removed events).
    """

    def __init__(self, registry: KeyRegistry, *, partial: bool = True) -> None:
        self.registry = CachedRegistry(registry)
        self.verifier = LogVerifier(partial=partial)

    def check(self, subject: str, sequence: int, data: bytes, headers: dict[str, str], stored_at: str) -> EventLine:
        message = RawMessage(subject=subject, sequence=sequence, data=data, headers=headers)
        checked = self.verifier.check(message, authenticate(message, self.registry))
        problem = "; ".join(f.reason for f in checked.findings)
        code = checked.findings[0].kind if checked.findings else ""
        if checked.opened is None:
            return EventLine(
                sequence, subject, stored_at, headers.get("Symbi-Event-Type", "?"), headers.get("Symbi-Producer", "?"),
                None, "", headers.get("Nats-Msg-Id", ""), False, problem, code,
            )  # fmt: skip
        header = checked.opened.header
        return EventLine(
            sequence, subject, stored_at, header.event_type, header.producer, header.aggregate_version,
            header.signing_key_id, header.event_id, not checked.findings, problem, code,
        )  # fmt: skip


async def read_events(
    nats_url: str, subject: str, *, start_sequence: int = 1, follow: bool = False, idle_s: float = 1.0
) -> AsyncIterator[tuple[str, int, bytes, dict[str, str], str]]:
    """Stored events on ``subject`` from ``start_sequence``, through an ephemeral consumer (nothing is acked)."""
    nc = await nats.connect(
        **server_options(nats_url), connect_timeout=5, allow_reconnect=follow, max_reconnect_attempts=-1
    )
    try:
        js = nc.jetstream()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start_sequence, 1),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30,
            filter_subject=subject,
        )
        psub = await js.pull_subscribe(subject, durable=None, stream=EVENTS_STREAM, config=config)
        fetch = BacklogFetch(psub, 256)
        try:
            while True:
                msgs = await fetch(timeout=idle_s)
                if not msgs:
                    if follow:
                        continue
                    return
                for m in msgs:
                    meta = m.metadata
                    stored_at = meta.timestamp.astimezone(dt.UTC).isoformat(timespec="milliseconds")
                    headers = {str(k): v for k, v in (m.headers or {}).items()}
                    yield m.subject, int(meta.sequence.stream), bytes(m.data), headers, stored_at
                if not follow and msgs and msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            await psub.unsubscribe()
    finally:
        await nc.drain()


async def _first_sequence(nats_url: str, last: int) -> int:
    nc = await nats.connect(**server_options(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        return max(int(info.state.last_seq) - last + 1, 1)
    finally:
        await nc.drain()


async def tail(
    nats_url: str, registry: KeyRegistry, subject: str, *, last: int | None, follow: bool
) -> AsyncIterator[EventLine]:
    """Verified lines for the stored events (the last ``last`` only, if given)."""
    start = await _first_sequence(nats_url, last) if last else 1
    verifier = StreamVerifier(registry, partial=bool(last) or subject != "evt.>")
    async for subj, seq, data, headers, stored_at in read_events(
        nats_url, subject, start_sequence=start, follow=follow
    ):
        yield verifier.check(subj, seq, data, headers, stored_at)


def operator_url(home: Path) -> str:
    """The operator NATS URL that ``symbi up`` left in its home, else the default local server."""
    try:
        return (home / "run" / "nats-operator.url").read_text().strip()
    except FileNotFoundError:
        return "nats://127.0.0.1:4222"


def _print_line(console: Console, line: EventLine) -> None:
    mark = "[green]✓[/]" if line.verified else f"[red]✗ {line.problem_code}: {line.problem}[/]"
    version = f"v{line.aggregate_version}" if line.aggregate_version is not None else "v?"
    console.print(
        f"{line.sequence:>7} {line.stored_at} {line.subject} {line.event_type} {version} "
        f"by {line.producer} ({line.signing_key_id or 'unsigned'}) {mark}",
        highlight=False,
        soft_wrap=True,
    )


@events_app.command("tail")
def tail_command(
    subject: Annotated[str, typer.Option("--subject", help="Subject filter, e.g. 'evt.agent.>'.")] = "evt.>",
    last: Annotated[int, typer.Option("--last", help="Only the last N events of the stream (0 = all).")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime directory of `symbi up`.")] = (
        DEFAULT_HOME
    ),
    nats_url: Annotated[
        str | None,
        typer.Option("--nats-url", envvar="SYMBI_NATS_URL", help="Default: the running `symbi up`'s operator URL."),
    ] = None,
    keys_dir: Annotated[Path | None, typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR")] = None,
) -> None:
    """Print stored events with their verification; exits 1 if any event fails verification."""
    console = Console(highlight=False)
    keys_dir = keys_dir or home / "keys"
    nats_url = nats_url or operator_url(home)
    try:
        registry = KeyRegistry.load(keys_dir)
    except KeyringError as err:
        console.print(f"[red]symbi events: {err}[/]")
        raise typer.Exit(2) from None

    async def run() -> int:
        bad = 0
        async for line in tail(nats_url, registry, subject, last=last or None, follow=follow):
            bad += not line.verified
            if as_json:
                sys.stdout.write(msgspec.json.encode(asdict(line)).decode() + "\n")
                sys.stdout.flush()
            else:
                _print_line(console, line)
        return 1 if bad else 0

    try:
        code = asyncio.run(run())
    except (OSError, nats.errors.Error) as err:
        console.print(f"[red]symbi events: cannot read the stream at {without_credentials(nats_url)}: {err}[/]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
