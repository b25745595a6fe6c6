"""``symbi bus``: the dead letters of the bus between agents, and its traffic live (metadata only).

``symbi bus dlq list | show SEQ | replay SEQ | purge`` read and manage stream ``DEADLETTER`` (``dlq.<agent>``):
each entry is a message that expired, was delivered too often without an acknowledgement, or was refused at
delivery (unknown sender key, bad signature, policy), with its reason. ``replay`` puts the message, as it
was signed, back into its recipient's inbox, marked replayed: its TTL counts from the replay and the
recipient's gateway decides policy for it again before handing it over. ``symbi bus tail`` prints each
message's metadata as it passes; bodies are encrypted, and only ``--decrypt`` shows them, to an operator who
holds the wrap key of a service the message keys are sealed to (the audit service's, in ``--keys-dir``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import typer
from rich.console import Console
from symbi_common.bus_streams import inbox_config
from symbi_common.consuming import ensure_consumer
from symbi_common.datakeys import open_service_datakeys
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.nats_client import server_options, without_credentials
from symbi_contracts.bus import (
    DEAD_DECODER,
    DEADLETTER_STREAM,
    ENVELOPE_DECODER,
    MESSAGES_STREAM,
    REPLAYED_AT,
    DeadLetter,
    Envelope,
    Meta,
    dead_subject,
    direct_subject,
    encode,
    meta_bytes,
    topic_subject,
    valid_agent_id,
)

from symbi_cli.events import DEFAULT_HOME, operator_url

bus_app = typer.Typer(help="The bus between agents: dead letters and live traffic.", no_args_is_help=True)
dlq_app = typer.Typer(help="Messages that could not be delivered, with why.", no_args_is_help=True)
bus_app.add_typer(dlq_app, name="dlq")

HomeOption = Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The `symbi up` home.")]
UrlOption = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="SYMBI_NATS_URL", help="Default: the running `symbi up`'s operator URL."),
]
AgentOption = Annotated[str | None, typer.Option("--agent", help="Only this recipient (or sender, for tail).")]


class BusCommandError(Exception):
    """A dead letter that is not there, or a bad name."""


# --- the dead letters (used by the commands and the tests) -----------------------------------------


async def dead_letters(js: Any, agent: str | None = None, limit: int = 1000) -> list[tuple[int, DeadLetter]]:
    """``(sequence, dead letter)`` of the stream, oldest first (``agent``: only those meant for it)."""
    state = (await js.stream_info(DEADLETTER_STREAM)).state
    out: list[tuple[int, DeadLetter]] = []
    for seq in range(state.first_seq, state.last_seq + 1):
        if state.messages == 0 or len(out) >= limit:
            break
        letter = await dead_letter(js, seq)
        if letter is not None and (agent is None or letter.recipient == agent):
            out.append((seq, letter))
    return out


async def dead_letter(js: Any, seq: int) -> DeadLetter | None:
    try:
        stored = await js.get_msg(DEADLETTER_STREAM, seq)
    except nats.js.errors.NotFoundError:
        return None
    try:
        return DEAD_DECODER.decode(stored.data or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def replay(js: Any, seq: int) -> Meta:
    """Put dead letter ``seq`` back into its recipient's inbox (then remove it from the dead letters)."""
    letter = await dead_letter(js, seq)
    if letter is None:
        raise BusCommandError(f"there is no dead letter {seq} in {DEADLETTER_STREAM}")
    recipient, meta = letter.recipient, letter.envelope.meta
    if not valid_agent_id(recipient):
        raise BusCommandError(f"dead letter {seq} names no valid recipient ({recipient!r})")
    # The inbox exists (else interest retention would drop the message at once).
    await ensure_consumer(js, MESSAGES_STREAM, inbox_config(recipient, [direct_subject(recipient)]))
    headers = {"Nats-Msg-Id": f"{meta.id}-replay-{seq}", REPLAYED_AT: repr(time.time())}
    await js.publish(direct_subject(recipient), encode(letter.envelope), stream=MESSAGES_STREAM, headers=headers)
    await js.delete_msg(DEADLETTER_STREAM, seq)
    return meta


async def purge(js: Any, agent: str | None = None) -> int:
    """Drop the dead letters (of ``agent`` only, if given); returns how many went."""
    before = (await js.stream_info(DEADLETTER_STREAM)).state.messages
    if agent is None:
        await js.purge_stream(DEADLETTER_STREAM)
    else:
        await js.purge_stream(DEADLETTER_STREAM, subject=dead_subject(agent))
    after = (await js.stream_info(DEADLETTER_STREAM)).state.messages
    return int(before - after)


def describe(meta: Meta) -> str:
    """One line of metadata (never the body)."""
    target = f"topic {meta.topic}" if meta.topic else f"→ {meta.to}"
    extra = "".join(
        f" {k}={v}" for k, v in (("class", meta.classification), ("ttl", meta.ttl_s), ("re", meta.in_reply_to)) if v
    )
    return f"{meta.id} {meta.kind} {meta.sender} {target} {meta.size} B{extra}"


#: How ``tail`` shows a body: the envelope in, its plaintext (or why not) out.
Opener = Callable[[Envelope], Awaitable[str]]
#: The service whose wrap key opens message data keys (they are sealed to the audit service and the sender's host).
MESSAGE_KEY_READER = "audit"


async def body_opener(js: Any, keys_dir: Path, service: str = MESSAGE_KEY_READER) -> Opener:
    """An :data:`Opener` with ``service``'s wrap key from ``keys_dir``: an operator who holds it reads bodies."""
    try:
        registry = KeyRegistry.load(keys_dir)
        datakeys = await open_service_datakeys(js, keys_dir / service, service, registry)
    except (SymbiError, OSError) as exc:
        raise BusCommandError(f"cannot open message keys as {service} from {keys_dir}: {exc}") from None

    async def open_body(envelope: Envelope) -> str:
        try:
            key = await datakeys.by_id(envelope.key_id)
        except SymbiError as exc:
            return f"(not decrypted: {exc.code})"
        plain = key.decrypt(envelope.nonce, envelope.ciphertext, meta_bytes(envelope.meta))
        return plain.decode(errors="replace") if plain is not None else "(not decrypted: it does not open)"

    return open_body


async def tail(
    nc: Any,
    on_line: Callable[[str], None],
    agent: str | None,
    topic: str | None,
    stop: asyncio.Event,
    opener: Opener | None = None,
) -> None:
    """Print the metadata of every message passing (to or from ``agent``; on ``topic``) until ``stop``; with
    ``opener``, each body too."""
    subject = topic_subject(topic) if topic else "msg.>"
    sub = await nc.subscribe(subject)
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            try:
                envelope = ENVELOPE_DECODER.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            meta = envelope.meta
            if agent is None or agent in (meta.sender, meta.to):
                body = f" body={await opener(envelope)}" if opener is not None else ""
                on_line(f"{time.strftime('%H:%M:%S')} {msg.subject} {describe(meta)}{body}")
    finally:
        await sub.unsubscribe()


# --- the commands ------------------------------------------------------------------------------------


def _run(url: str, job: Callable[[Any], Any]) -> Any:
    async def go() -> Any:
        nc = await nats.connect(**server_options(url), connect_timeout=5, allow_reconnect=False)
        try:
            return await job(nc)
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except BusCommandError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        Console(stderr=True).print(f"[red]error:[/] NATS at {without_credentials(url)}: {exc!r}")
        raise typer.Exit(2) from None


@dlq_app.command("list")
def dlq_list(agent: AgentOption = None, home: HomeOption = DEFAULT_HOME, nats_url: UrlOption = None) -> None:
    """The dead letters: sequence, when, reason, recipient and the message's metadata."""
    url = nats_url or operator_url(home)
    letters = _run(url, lambda nc: dead_letters(nc.jetstream(), agent))
    console = Console(highlight=False)
    for seq, letter in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.dead_at))
        console.print(f"{seq:>6} {when} {letter.reason:<18} {letter.recipient:<16} {describe(letter.envelope.meta)}")
    if not letters:
        console.print("no dead letters")


@dlq_app.command("show")
def dlq_show(seq: int, home: HomeOption = DEFAULT_HOME, nats_url: UrlOption = None) -> None:
    """One dead letter in full (metadata, reason and detail; the body stays encrypted)."""
    letter = _run(nats_url or operator_url(home), lambda nc: dead_letter(nc.jetstream(), seq))
    if letter is None:
        Console(stderr=True).print(f"[red]error:[/] there is no dead letter {seq}")
        raise typer.Exit(1)
    shown = {
        "reason": letter.reason,
        "detail": letter.detail,
        "recipient": letter.recipient,
        "dead_at": letter.dead_at,
        "meta": msgspec.to_builtins(letter.envelope.meta),
        "key_id": letter.envelope.key_id,
        "ciphertext_bytes": len(letter.envelope.ciphertext),
    }
    Console(highlight=False).print_json(msgspec.json.encode(shown).decode())


@dlq_app.command("replay")
def dlq_replay(seq: int, home: HomeOption = DEFAULT_HOME, nats_url: UrlOption = None) -> None:
    """Put a dead letter back into its recipient's inbox; policy is decided again at delivery."""
    meta = _run(nats_url or operator_url(home), lambda nc: replay(nc.jetstream(), seq))
    Console(highlight=False).print(f"replayed {meta.id} to {meta.to or meta.topic}")


@dlq_app.command("purge")
def dlq_purge(
    agent: AgentOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    home: HomeOption = DEFAULT_HOME,
    nats_url: UrlOption = None,
) -> None:
    """Drop the dead letters (of one recipient with --agent)."""
    if not yes and not typer.confirm(f"drop the dead letters{' of ' + agent if agent else ''}?"):
        raise typer.Exit(1)
    gone = _run(nats_url or operator_url(home), lambda nc: purge(nc.jetstream(), agent))
    Console(highlight=False).print(f"{gone} dead letters dropped")


@bus_app.command("tail")
def bus_tail(
    agent: AgentOption = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Only this topic.")] = None,
    decrypt: Annotated[
        bool, typer.Option("--decrypt", help="Show bodies too (needs the audit service's wrap key in --keys-dir).")
    ] = False,
    keys_dir: Annotated[Path | None, typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR")] = None,
    home: HomeOption = DEFAULT_HOME,
    nats_url: UrlOption = None,
) -> None:
    """Show messages live as they pass: subject and metadata (who, to whom, kind, size); bodies only with
    --decrypt, for an operator who holds the keys."""
    console = Console(highlight=False)
    stop = asyncio.Event()

    async def job(nc: Any) -> None:
        opener = await body_opener(nc.jetstream(), keys_dir or home / "keys") if decrypt else None
        await tail(nc, console.print, agent, topic, stop, opener)

    try:
        _run(nats_url or operator_url(home), job)
    except KeyboardInterrupt:
        stop.set()
