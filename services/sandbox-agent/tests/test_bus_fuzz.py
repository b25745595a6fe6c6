"""What a receiving host takes from NATS ends in a delivered message or a typed refusal, never an exception that
drops the batch (pure: fakes stand in for JetStream, the data keys and the identity keys).

The bytes of a fetched message, its headers, a sender's name, a body that decrypts, an inbox's declared
metadata and a max-deliveries advisory all come from the wire; ``in_reply_to`` comes from an agent's request.
A fetched batch is acked or held, each message once: nothing accepted is lost or handed over twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.js.kv import _is_key_valid
from symbi_common.bounds import nested_deeper_than
from symbi_common.bus_streams import QUEUE_DEPTH_KEY, inbox_name
from symbi_common.crypto import AeadKey, Signer, Verifier
from symbi_common.errors import DataKeyDestroyed
from symbi_contracts.agent_protocol import Error, Request
from symbi_contracts.bus import (
    ENVELOPE_DECODER,
    INBOX_DEPTH,
    MAX_AGENT_ID,
    MAX_BODY_DEPTH,
    REPLAYED_AT,
    Meta,
    encode,
    reply_subject,
    valid_agent_id,
    valid_name,
)
from symbi_lifecycle.domain import AGENT_ID_RE
from symbi_sandbox_agent.bus.carrier import Carrier
from symbi_sandbox_agent.bus.codec import Refused, body_bytes, check_signature, open_payload, seal
from symbi_sandbox_agent.bus.errors import BadAddress, BadMessage, BusError, TooLarge
from symbi_sandbox_agent.bus.identity import Identities, UnknownSender
from symbi_sandbox_agent.bus.limits import RateLimiter, SendLimits
from symbi_sandbox_agent.bus.recipients import Recipients
from symbi_sandbox_agent.bus.runtime import follow_max_deliveries
from symbi_sandbox_agent.message_ops import ARGS, MessageOps

from .test_bus_pure import DictKv

ALICE = Signer.generate()
KEY = AeadKey("message.alice.bob/1", os.urandom(32))
NOW = time.time()  # (one length of the encoded time: the same draws replay the same bytes)
#: Past msgspec's recursion limit (about 1000 levels less the caller's stack): a body this deep may not decode.
DEEP = 1000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
names = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
#: Header values an operator's replay might carry, or a peer might forge.
replay_values = (
    st.sampled_from(
        ["", "0", "1700000000.5", "abc", "nan", "inf", "-inf", "1e999", "-5", "\xb2", "\u0661\u0662", " 12 ", "1_000"]
    )
    | st.just("9" * 5000)
    | st.builds(lambda: repr(time.time()))
    | st.text(max_size=12)
)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- sealing and opening -------------------------------------------------------------------------


metas = st.builds(
    Meta,
    id=st.text(max_size=40),
    kind=st.sampled_from(["direct", "topic", "request", "reply"]),
    sender=st.text(max_size=40),
    sent_at=st.floats(allow_nan=False, allow_infinity=False),
    to=st.text(max_size=20),
    topic=st.text(max_size=20),
    ttl_s=st.floats(allow_nan=False, allow_infinity=False),
    reply_to=st.text(max_size=20),
    in_reply_to=st.text(max_size=20),
    classification=st.text(max_size=20),
    size=st.integers(-(2**63), 2**64 - 1),
)


@FUZZ
@given(meta=metas, body=json_values)
def test_any_metadata_and_body_survive_the_wire_unchanged(meta: Meta, body: Any) -> None:
    envelope = seal(meta, body_bytes(body), KEY, ALICE)
    wire = ENVELOPE_DECODER.decode(encode(envelope))
    assert wire == envelope
    check_signature(wire, Verifier(ALICE.public_key))
    assert open_payload(wire, KEY) == body


@FUZZ
@given(
    plaintext=st.binary(max_size=64)
    | st.builds(lambda d: b"[" * d + b"]" * d, st.integers(0, 3000))
    | st.builds(lambda d: b'{"a":' * d + b"1" + b"}" * d, st.integers(0, 3000))
    | st.sampled_from([b"1e400", b'"\\ud800"', b"\xff", b'"\xe9"', b"", b"[1,]", b"NaN"])
)
@example(plaintext=b'{"a":"\xe9"}')  # msgspec: UnicodeDecodeError
@example(plaintext=b"[" * 5000 + b"]" * 5000)  # msgspec: RecursionError
def test_a_signed_payload_that_is_no_json_body_is_refused_not_raised(plaintext: bytes) -> None:
    """A peer holding the sender's key (another host) may seal anything: the receiver refuses it, typed."""
    envelope = seal(Meta(id="m", kind="direct", sender="alice", sent_at=1.0, to="bob"), plaintext, KEY, ALICE)
    try:
        body = open_payload(envelope, KEY)
    except Refused as refusal:
        reason = refusal.reason
    else:
        assert msgspec.json.decode(plaintext) == body
        return
    assert reason == "refused"


# --- a fetched batch -------------------------------------------------------------------------------


@dataclass
class FakeMsg:
    data: bytes
    headers: dict[str, str] | None
    seq: int
    num_delivered: int = 1
    acks: int = 0
    naks: int = 0
    metadata: Any = None

    def __post_init__(self) -> None:
        self.metadata = type("Meta", (), {"num_delivered": self.num_delivered})()
        self.metadata.sequence = type("Seq", (), {"stream": self.seq})()

    async def ack(self) -> None:
        self.acks += 1

    async def nak(self) -> None:
        self.naks += 1


@dataclass
class FakeJs:
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None, **_: Any) -> None:
        if not subject or any(c.isspace() for c in subject):  # what nats-py refuses before sending
            raise nats.errors.BadSubjectError
        self.published.append((subject, data, headers or {}))


class FakeKv(DictKv):
    """A KV bucket as nats-py's answers it: an invalid key is refused, a missing one not found."""

    async def get(self, key: str) -> Any:
        if not _is_key_valid(key):
            raise nats.js.errors.InvalidKeyError
        if key not in self.data:
            raise nats.js.errors.KeyNotFoundError
        return type("Entry", (), {"value": self.data[key]})()

    async def keys(self, filters: list[str] | None = None) -> list[str]:
        if not self.data:
            raise nats.js.errors.NoKeysError
        return list(self.data)


class FakeIdentities:
    registry: Any = None
    check_signed = Identities.check_signed  # (the real check, over this verifier)

    async def verifier(self, agent_id: str, *, fresh: bool = False) -> Verifier:
        if agent_id != "alice":
            raise UnknownSender(f"no identity key is registered for agent {agent_id[:40]!r}")
        return Verifier(ALICE.public_key)

    async def signer(self, agent_id: str) -> Signer:
        return ALICE


class FakeDataKeys:
    async def by_id(self, key_id: str) -> AeadKey:
        if key_id != KEY.key_id:
            raise DataKeyDestroyed(f"data key {key_id[:40]!r} does not exist", key_id=key_id[:40])
        return KEY

    async def current(self, name: str) -> AeadKey:
        return AeadKey(f"{name}/1", b"k" * 32)


def carrier() -> Carrier:
    return Carrier(FakeJs(), None, FakeDataKeys(), FakeIdentities(), FakeKv(), RateLimiter(SendLimits()))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Sent:
    """One fetched message and what the receiver must make of it (``body`` if it must be handed over)."""

    data: bytes
    headers: dict[str, str] | None
    deliverable: bool  # a well-formed message of a known sender, dated or not: it must be handed over
    body: Any = None
    maybe: bool = False  # too deep to decode here, or a flipped bit the decoding ignores: either is fine


def _valid(i: int, body: Any, deep: int | None) -> tuple[bytes, Any, bool]:
    meta = Meta(id=f"m{i}", kind="direct", sender="alice", sent_at=NOW, to="bob", size=1)
    if deep is not None:
        return encode(seal(meta, b"[" * deep + b"]" * deep, KEY, ALICE)), None, True
    return encode(seal(meta, body_bytes(body), KEY, ALICE)), body, False


@st.composite
def fetched(draw: st.DrawFn, i: int) -> Sent:
    variant = draw(st.sampled_from(["valid", "valid", "deep", "garbage", "flipped", "sender", "json"]))
    header = draw(st.none() | replay_values)
    headers = None if header is None else {REPLAYED_AT: header}
    well_dated = header is None or header == "" or re.fullmatch(r"[0-9]{1,20}(\.[0-9]{1,20})?", header) is not None
    if variant in ("valid", "deep"):
        deep = draw(st.integers(DEEP, 3000)) if variant == "deep" else None
        data, body, is_deep = _valid(i, draw(json_values), deep)
        return Sent(data, headers, well_dated, body, maybe=is_deep and well_dated)
    if variant == "garbage":
        return Sent(draw(st.binary(max_size=80)), headers, False)
    if variant == "flipped":
        data, body, _ = _valid(i, draw(json_values), None)
        at = draw(st.integers(0, len(data) - 1))
        flipped = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        return Sent(flipped, headers, False, body, maybe=well_dated)
    if variant == "sender":  # whatever a peer names as the sender: not a key this host trusts
        sender = draw(st.text(max_size=20).filter(lambda s: s != "alice"))
        meta = Meta(id=f"m{i}", kind="direct", sender=sender, sent_at=1.0, to="bob")
        return Sent(encode(seal(meta, b"1", KEY, ALICE)), headers, False)
    doc = draw(st.dictionaries(st.sampled_from(["meta", "key_id", "nonce", "ciphertext", "signature"]), json_values))
    return Sent(msgspec.json.encode(doc), headers, False)


@st.composite
def batches(draw: st.DrawFn) -> list[Sent]:
    return [draw(fetched(i)) for i in range(draw(st.integers(1, 6)))]


@FUZZ
@given(sent=batches())
def test_a_fetched_batch_is_handed_over_or_dead_lettered_each_message_once(sent: list[Sent]) -> None:
    async def go() -> None:
        bus = carrier()
        checked: list[str] = []

        async def check(sender: str, recipient: str, meta: Meta) -> str | None:
            checked.append(meta.id)
            return None

        msgs = [FakeMsg(s.data, s.headers, seq) for seq, s in enumerate(sent, 1)]
        refused: list[str] = []
        batch = await bus.take("bob", msgs, check, refused)
        assert len(batch.delivered) == len(batch.held)
        for m, s in zip(msgs, sent, strict=True):
            held = [i for i, h in enumerate(batch.held) if h is m]
            assert m.acks == (0 if held else 1), "a message is held or acked, once"
            if s.deliverable and not s.maybe:
                assert held, f"a well-formed message was refused: {refused}"
            if held:
                assert s.deliverable or s.maybe
                assert len(held) == 1
                if s.body is not None or not s.maybe:
                    assert batch.delivered[held[0]].body == s.body
        assert len(refused) == len(msgs) - len(batch.held)
        assert all(subject == "dlq.bob" for subject, _, _ in bus.js.published)
        # Committed, the same messages redelivered are recognised: none is handed over twice.
        await bus.commit(batch)
        assert all(m.acks == 1 for m in msgs)
        again = [FakeMsg(m.data, m.headers, m.seq, num_delivered=2) for m in msgs]
        assert (await bus.take("bob", again, check, [])).delivered == []

    _run(go())


def _envelope_with(**changes: str) -> bytes:
    data, _, _ = _valid(0, "hi", None)
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (_envelope_with(key_id="x").replace(b'"x"', b'"\xe9"'), None),  # bad UTF-8 in a string: not msgspec's error
        (_valid(0, None, 5000)[0], None),  # a body nested deeper than this host decodes
        (_valid(0, "hi", None)[0], {REPLAYED_AT: "abc"}),
        (_valid(0, "hi", None)[0], {REPLAYED_AT: "9" * 5000}),  # float(): inf, a TTL that never ends
        (_valid(0, "hi", None)[0], {REPLAYED_AT: "\u0661\u0662"}),  # float() takes Arabic-Indic digits
    ],
)
def test_a_message_that_cannot_be_delivered_is_dead_lettered_and_acked(
    data: bytes, headers: dict[str, str] | None
) -> None:
    async def go() -> None:
        bus = carrier()
        msg, refused = FakeMsg(data, headers, 1), []
        batch = await bus.take("bob", [msg], lambda *_: asyncio.sleep(0, None), refused)
        assert (batch.delivered, msg.acks, len(refused)) == ([], 1, 1)

    _run(go())


@FUZZ
@given(sender=st.text(max_size=70))
@example(sender="")
@example(sender="a b")
def test_any_sender_name_is_a_verified_key_or_unknown_sender(sender: str) -> None:
    identities = Identities(FakeKv(), Signer.generate(), None)  # type: ignore[arg-type]
    with pytest.raises(UnknownSender):
        _run(identities.verifier(sender))


# --- sending: what an agent's request names -------------------------------------------------------


@FUZZ
@given(
    to=names | st.text(max_size=70),
    in_reply_to=st.sampled_from(["", "a b", "x\r\nPUB y 1", "a.b", ">", "*", "\t"]) | names | st.text(max_size=70),
)
@example(to="bob", in_reply_to="a b")  # nats-py: BadSubjectError
@example(to="bob", in_reply_to="a.b")  # a fifth token
def test_a_reply_goes_to_one_literal_subject_or_is_refused_typed(to: str, in_reply_to: str) -> None:
    async def go() -> None:
        bus = carrier()
        try:
            await bus.send("alice", "reply", {"ok": True}, to=to, in_reply_to=in_reply_to)
        except BusError:
            return
        [(subject, data, _)] = bus.js.published
        assert subject == reply_subject(to, in_reply_to)
        assert [t for t in subject.split(".") if valid_name(t)] == subject.split(".")
        assert len(subject.split(".")) == 4
        assert ENVELOPE_DECODER.decode(data).meta.in_reply_to == in_reply_to

    _run(go())


@FUZZ
@given(limit=st.integers(4, 4096), extra=st.integers(-2, 2))
def test_the_largest_body_is_sent_and_one_byte_more_is_too_large(limit: int, extra: int) -> None:
    body = "x" * (limit - 2 + extra)  # a JSON string: its length and two quotes

    async def go() -> None:
        bus = carrier()
        limits = SendLimits(max_message_bytes=limit)
        if extra > 0:
            with pytest.raises(TooLarge) as err:
                await bus.send("alice", "topic", body, topic="news", limits=limits)
            assert err.value.details["max_message_bytes"] == limit
            assert bus.js.published == []
            return
        meta = await bus.send("alice", "topic", body, topic="news", limits=limits)
        assert meta.size == limit + extra
        assert len(bus.js.published) == 1

    _run(go())


# --- what an inbox declares, and JetStream's advisories ------------------------------------------


@FUZZ
@given(declared=st.none() | st.text(max_size=12) | st.sampled_from(["\xb2", "9" * 5000, "0", "7", "-1", " 7"]))
@example(declared="9" * 5000)  # int(): ValueError past 4300 digits
def test_an_inbox_declared_depth_is_a_number_or_the_default(declared: str | None) -> None:
    metadata = {} if declared is None else {QUEUE_DEPTH_KEY: declared}
    info = type("Info", (), {"config": type("Config", (), {"metadata": metadata})(), "num_pending": 3})()
    info.num_ack_pending = None

    class Js:
        async def consumer_info(self, stream: str, name: str) -> Any:
            return info

    inbox = _run(Recipients(Js())._read("bob", 0.0))
    assert inbox.waiting == 3
    if declared is not None and declared.isascii() and declared.isdigit() and len(declared) <= 9:
        assert inbox.depth == int(declared)
    else:
        assert inbox.depth == INBOX_DEPTH


class FakeStore:
    def __init__(self, data: bytes) -> None:
        self.data = data


def _expected_letter(data: bytes, stored: dict[int, FakeStore]) -> tuple[bytes, str, str] | None:
    """What a well-formed advisory about a stored message of an inbox dead-letters (nothing else is)."""
    try:
        advisory = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(advisory, dict):
        return None
    consumer, seq = advisory.get("consumer"), advisory.get("stream_seq")
    if not isinstance(consumer, str) or not consumer.startswith("inbox-") or not consumer[6:]:
        return None
    if type(seq) is not int or seq not in stored:
        return None
    return stored[seq].data, consumer[6:], "max_deliveries"


@FUZZ
@given(
    advisories=st.lists(
        st.builds(
            lambda c, s, d: json.dumps({"consumer": c, "stream_seq": s, "deliveries": d}).encode(),
            st.sampled_from(["inbox-bob", "inbox-", "other", 5, None]),
            st.sampled_from([1, 2, 3, 0, -1, 2**70, 1.5, 1e308, "1", None, True, [1]]),
            st.integers(0, 9),
        )
        | st.binary(max_size=40)
        | st.sampled_from([b"[1]", b"1", b'"x"', b"null", b"[" * 100_000, b"1e999", b'{"consumer": "inbox-b"}']),
        max_size=5,
    )
)
@example(
    advisories=[b"[1]", b'{"consumer": "inbox-bob", "stream_seq": 1e308}', b'{"consumer": "inbox-", "stream_seq": 1}']
)
def test_every_max_deliveries_advisory_is_dead_lettered_or_skipped_and_the_follower_goes_on(
    advisories: list[bytes],
) -> None:
    """The follower runs for the process's life: one odd advisory must not end it."""
    stored = {1: FakeStore(b"one"), 2: FakeStore(b"two")}
    letters: list[tuple[bytes, str, str]] = []
    last = json.dumps({"consumer": "inbox-bob", "stream_seq": 2}).encode()

    class Js:
        async def get_msg(self, stream: str, seq: int) -> FakeStore:
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**64:
                raise nats.js.errors.BadRequestError
            if seq not in stored:
                raise nats.js.errors.NotFoundError
            return stored[seq]

    class Bus:
        js = Js()

        async def dead_letter(self, data: bytes, recipient: str, reason: str, detail: str) -> None:
            letters.append((data, recipient, reason))

    async def feed() -> AsyncIterator[Any]:
        for data in [*advisories, last]:
            yield type("Msg", (), {"data": data})()

    class Sub:
        unsubscribed = False
        messages = feed()

        async def unsubscribe(self) -> None:
            self.unsubscribed = True

    sub = Sub()
    _run(follow_max_deliveries(Bus(), sub))  # type: ignore[arg-type]
    assert sub.unsubscribed
    expected = [e for e in (_expected_letter(a, stored) for a in [*advisories, last]) if e is not None]
    assert letters == expected


# --- a body's depth, a TTL, an agent id: refused typed when sent --------------------------------------


def _nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` containers (objects and lists in turn), one inside the next (built without recursion: any depth)."""
    body = leaf
    for i in range(depth):
        body = [body] if i % 2 else {"k": body}
    return body


def _depth(value: Any) -> int:
    """Containers nested in a (shallow) JSON value: the recursive definition the check must agree with."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max(map(_depth, value), default=0)
    return 0


@FUZZ
@given(body=json_values | st.builds(_nested, st.integers(0, 130), json_values), limit=st.integers(0, 70))
def test_nested_deeper_than_counts_containers_as_json_nests_them(body: Any, limit: int) -> None:
    assert nested_deeper_than(body, limit) == (_depth(body) > limit)


@pytest.mark.parametrize("depth", [MAX_BODY_DEPTH + 1, 500, 5000])
def test_a_body_nested_deeper_than_the_limit_is_refused_typed_not_sent(depth: int) -> None:
    """``msgspec.json.encode`` of a body some thousand levels deep raises RecursionError."""

    async def go() -> None:
        bus = carrier()
        with pytest.raises(BadMessage, match=f"more than {MAX_BODY_DEPTH} levels") as err:
            await bus.send("alice", "direct", _nested(depth), to="bob")
        assert (err.value.code, err.value.details) == ("invalid_request", {"max_body_depth": MAX_BODY_DEPTH})
        assert bus.js.published == []

    _run(go())


def test_a_body_at_the_limit_is_sent_and_opened_and_one_level_more_is_refused_at_delivery() -> None:
    async def go() -> None:
        bus = carrier()
        body = _nested(MAX_BODY_DEPTH)
        await bus.send("alice", "topic", body, topic="news")
        [(_, data, _)] = bus.js.published
        assert open_payload(ENVELOPE_DECODER.decode(data), AeadKey("message.alice.topic-news/1", b"k" * 32)) == body

    _run(go())
    # A peer's host sealing a deeper body (its own limit, or none): the receiver refuses it, whatever its stack.
    meta = Meta(id="m", kind="direct", sender="alice", sent_at=1.0, to="bob")
    for deep in (MAX_BODY_DEPTH + 1, 300):
        envelope = seal(meta, body_bytes(_nested(deep)), KEY, ALICE)
        with pytest.raises(Refused, match=f"more than {MAX_BODY_DEPTH} levels") as refusal:
            open_payload(envelope, KEY)
        assert refusal.value.reason == "refused"


@pytest.mark.parametrize("ttl_s", [-1.0, -1e-9, float("nan"), float("inf"), float("-inf")])
def test_a_peer_message_whose_ttl_is_no_duration_is_dead_lettered_not_kept_forever(ttl_s: float) -> None:
    """Another host's sender may sign a TTL this one refuses to send; before, it meant "never expires"."""
    envelope = seal(Meta(id="m", kind="direct", sender="alice", sent_at=1.0, to="bob", ttl_s=ttl_s), b"1", KEY, ALICE)

    async def go() -> None:
        with pytest.raises(Refused, match="is not a duration") as refusal:
            await carrier().open_envelope(envelope, "bob", signed_here=True)
        assert refusal.value.reason == "refused"

    _run(go())


@pytest.mark.parametrize("ttl_s", [-1.0, -1e-9, -1e308, float("nan"), float("inf"), float("-inf")])
def test_a_ttl_that_is_no_duration_is_refused_typed(ttl_s: float) -> None:
    """A negative TTL was sent as "never expires" (and an infinite one is encoded as null: no receiver decodes it)."""

    async def go() -> None:
        bus = carrier()
        for kind, where in (("direct", {"to": "bob"}), ("topic", {"topic": "news"})):
            with pytest.raises(BadMessage, match="is not a duration") as err:
                await bus.send("alice", kind, {"x": 1}, ttl_s=ttl_s, **where)  # type: ignore[arg-type]
            assert err.value.code == "invalid_request"
        assert bus.js.published == []

    _run(go())


@pytest.mark.parametrize("ttl_s", [0.0, -0.0, 1e-9, 30.0, 1e9])
def test_a_ttl_of_zero_or_a_positive_duration_is_sent(ttl_s: float) -> None:
    async def go() -> None:
        bus = direct_carrier()
        meta = await bus.send("alice", "direct", {"x": 1}, to="bob", ttl_s=ttl_s)
        assert meta.ttl_s == ttl_s

    _run(go())


def direct_carrier() -> Carrier:
    """:func:`carrier` whose recipients all have room and whose inboxes exist (no consumers to fake)."""
    bus = carrier()

    async def room(*_: Any, **__: Any) -> None:
        return None

    bus.recipients.check = room  # type: ignore[method-assign]
    bus.ensure_inbox = room  # type: ignore[method-assign]
    return bus


def _ops() -> tuple[MessageOps, list[tuple[Any, ...]]]:
    recorded: list[tuple[Any, ...]] = []

    async def record(*entry: Any) -> None:
        recorded.append(entry)

    run = SimpleNamespace(agent_id="alice", spec=SimpleNamespace(messaging=None))
    return MessageOps(None, run, record), recorded  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "args", "says"),
    [
        ("messages.send", {"to": "bob", "body": _nested(5000)}, f"more than {MAX_BODY_DEPTH} levels"),
        ("messages.publish", {"topic": "news", "body": _nested(MAX_BODY_DEPTH + 1)}, "levels"),
        ("messages.request", {"to": "bob", "body": _nested(2000)}, "levels"),
        ("messages.send", {"to": "bob", "body": 1, "ttl_s": -5}, "ttl_s -5.0 is not a duration"),
        ("messages.publish", {"topic": "news", "body": 1, "ttl_s": -0.5}, "is not a duration"),
    ],
)
def test_an_agent_sending_a_too_deep_body_or_a_negative_ttl_gets_invalid_request(
    op: str, args: dict[str, Any], says: str
) -> None:
    """Refused before the body is encoded, decided or sent: the agent was answered ``internal`` (RecursionError)."""
    ops, recorded = _ops()
    request = Request(id="r1", op=op, args=args)
    parsed = msgspec.convert(request.args, ARGS[op])
    reply = _run(ops._send(1, request, parsed, None))  # type: ignore[arg-type]  (the carrier is never reached)
    assert isinstance(reply, Error)
    assert reply.error.code == "invalid_request"
    assert says in reply.error.message
    [entry] = recorded
    assert entry[5] == "failed"
    assert str(entry[6]).startswith("invalid_request: ")


# --- agent ids: every id the lifecycle allows can be addressed -------------------------------------


@FUZZ
@given(name=st.from_regex(r"[A-Za-z0-9_-]{1,140}", fullmatch=True) | st.text(max_size=140))
@example(name="a" * 128)
@example(name="a" * 129)
@example(name="a" * 127 + "\n")
@example(name="\u0661")
def test_the_bus_takes_exactly_the_agent_ids_the_lifecycle_allows(name: str) -> None:
    assert valid_agent_id(name) == (AGENT_ID_RE.match(name) is not None)


def test_an_agent_with_a_128_character_id_is_addressed_and_its_inbox_named_within_jetstream_limits() -> None:
    long_id = "a" * MAX_AGENT_ID

    async def go() -> None:
        bus = direct_carrier()
        await bus.send("alice", "direct", "hi", to=long_id)
        [(subject, data, _)] = bus.js.published
        assert subject == f"msg.direct.{long_id}"
        assert ENVELOPE_DECODER.decode(data).meta.to == long_id
        with pytest.raises(BadAddress, match=f"not an agent id \\(1-{MAX_AGENT_ID} "):
            await bus.send("alice", "direct", "hi", to=long_id + "a")
        with pytest.raises(BadAddress, match="not a topic"):  # topics stay 1-64
            await bus.send("alice", "topic", "hi", topic="t" * 65)
        with pytest.raises(BadAddress, match="not both"):
            await bus.send("alice", "direct", "hi", to="bob", topic="news")

    _run(go())
    assert len(inbox_name(long_id)) <= 255  # JetStream's longest consumer name (JSMaxNameLen)
    assert _is_key_valid(long_id)  # its AGENT_KEYS key
    assert _is_key_valid(f"{long_id}.{2**64 - 1}")  # its BUS_DELIVERED keys


# --- the max-deliveries follower: a NATS failure costs one advisory, never the follower ------------------


@pytest.mark.parametrize(
    "failure",
    [
        nats.errors.TimeoutError(),
        TimeoutError(),
        nats.js.errors.ServiceUnavailableError(),
        nats.errors.ConnectionClosedError(),
        nats.js.errors.APIError(code=503, description="JetStream system temporarily unavailable"),
    ],
)
@pytest.mark.parametrize("where", ["get_msg", "dead_letter"])
@pytest.mark.parametrize("failures", [1, 3, 4])
def test_the_max_deliveries_follower_retries_a_nats_failure_then_goes_on(
    failure: Exception, where: str, failures: int
) -> None:
    """A letter NATS fails to take is tried again (three times here); one that still fails costs that advisory,
    never the follower."""
    stored = {1: FakeStore(b"one"), 2: FakeStore(b"two")}
    letters: list[bytes] = []
    failed: list[int] = []

    def fail_once_more(seq: int) -> None:
        if seq == 1 and len(failed) < failures:
            failed.append(seq)
            raise failure

    class Js:
        async def get_msg(self, stream: str, seq: int) -> FakeStore:
            if where == "get_msg":
                fail_once_more(seq)
            return stored[seq]

    class Bus:
        js = Js()

        async def dead_letter(self, data: bytes, recipient: str, reason: str, detail: str) -> None:
            if where == "dead_letter":
                fail_once_more(1 if data == b"one" else 2)
            letters.append(data)

    async def feed() -> AsyncIterator[Any]:
        for seq in (1, 2):
            yield SimpleNamespace(data=json.dumps({"consumer": "inbox-bob", "stream_seq": seq}).encode())

    sub = SimpleNamespace(messages=feed(), unsubscribe=_unsubscribe)
    _run(follow_max_deliveries(Bus(), sub, retries_s=(0.0, 0.0, 0.0)))  # type: ignore[arg-type]
    assert failed == [1] * failures
    assert letters == ([b"one", b"two"] if failures <= 3 else [b"two"])


async def _unsubscribe() -> None:
    return None


def test_the_max_deliveries_follower_still_ends_when_cancelled() -> None:
    async def go() -> None:
        started, unsubscribed = asyncio.Event(), asyncio.Event()

        async def feed() -> AsyncIterator[Any]:
            started.set()
            await asyncio.Event().wait()  # no advisory comes
            yield None

        async def unsubscribe() -> None:
            unsubscribed.set()

        class Bus:
            js = None

        task = asyncio.create_task(
            follow_max_deliveries(Bus(), SimpleNamespace(messages=feed(), unsubscribe=unsubscribe))  # type: ignore[arg-type]
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert unsubscribed.is_set()

    _run(go())
