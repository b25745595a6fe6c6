"""Property tests over event envelopes and every service's event payloads: whatever bytes arrive on a subject,
decoding ends in the event or in a typed Symbi error, never another exception.

Three layers of input: arbitrary bytes; well-formed msgpack of the wrong shape (random values under the right
field names); validly signed envelopes around such headers and payloads, so the checks behind the signature
(header fields, chain, decryption, payload schema) are reached too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symbi_audit.erasure import CODEC as AUDIT_CODEC
from symbi_common.crypto import AeadKey
from symbi_common.envelope import SealedEvent, decode_header, decode_sealed, encode_sealed, signed_message
from symbi_common.errors import SymbiError
from symbi_common.events import EventCodec
from symbi_common.key_material import load_signer
from symbi_common.keyfiles import init_keyring
from symbi_common.keyring import KeyRegistry
from symbi_common.policy.events import DECISION_LOG_CODEC, POLICY_SET_CODEC
from symbi_common.sealing import NEW_AGGREGATE, check_link, decrypt, open_envelope, seal
from symbi_context.domain import KNOWLEDGE, MEMORY
from symbi_contracts.lifecycle.events import CODEC as LIFECYCLE_CODEC
from symbi_contracts.sandbox_agent.events import EXECUTION_CODEC, HOST_CODEC
from symbi_contracts.scheduler.events import CODEC as TASK_CODEC
from symbi_scheduler.schedules import CODEC as SCHEDULE_CODEC

CODECS: dict[str, EventCodec[Any]] = {
    "lifecycle": LIFECYCLE_CODEC,
    "task": TASK_CODEC,
    "schedule": SCHEDULE_CODEC,
    "execution": EXECUTION_CODEC,
    "host": HOST_CODEC,
    "memory": MEMORY.codec,
    "knowledge": KNOWLEDGE.codec,
    "audit": AUDIT_CODEC,
    "policy_set": POLICY_SET_CODEC,
    "decision_log": DECISION_LOG_CODEC,
}
EVENT_TYPES = sorted((name, tag) for name, codec in CODECS.items() for tag in codec.tags)
TYPES = {cls.__struct_config__.tag: cls for codec in CODECS.values() for cls in codec.types}
FIELDS = {tag: list(cls.__struct_fields__) for tag, cls in TYPES.items()}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def shaped(draw: st.DrawFn, tag: str) -> bytes:
    """A msgpack map with the event's tag and some of its fields, holding random values."""
    fields = FIELDS[tag]
    chosen = draw(st.lists(st.sampled_from(fields), unique=True)) if fields else []
    body: dict[str, Any] = {name: draw(values) for name in chosen}
    if draw(st.booleans()):
        body[TYPES[tag].__struct_config__.tag_field or "type"] = tag
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(values)
    return msgspec.msgpack.encode(body)


def decodes_or_typed_error(codec: EventCodec[Any], data: bytes, event_type: str) -> None:
    try:
        event = codec.decode(data, event_type=event_type, sequence=1, subject="evt.x.y")
    except SymbiError:
        return
    codec.encode(event)  # what decoded also encodes again


class Keys:
    def __init__(self, path: Path) -> None:
        init_keyring(path)
        self.registry = KeyRegistry.load(path)
        self.signer = load_signer(path / "lifecycle" / "signing.key")
        self.data_key = AeadKey("agent.a1/1", os.urandom(32))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def open_fully(keys: Keys, data: bytes, subject: str = "evt.agent.a1") -> bytes | None:
    """Everything a reader does with stored bytes; a typed error or the plaintext."""
    try:
        opened = open_envelope(data, subject=subject, sequence=1, registry=keys.registry)
        check_link(NEW_AGGREGATE, opened)
        return decrypt(opened, keys.data_key)
    except SymbiError:
        return None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_a_decoder(data: bytes) -> None:
    for decode in (decode_header, decode_sealed):
        with contextlib.suppress(SymbiError):
            decode(data)
    for name, tag in EVENT_TYPES:
        decodes_or_typed_error(CODECS[name], data, tag)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_well_formed_msgpack_of_the_wrong_shape_is_a_typed_error(data: st.DataObject) -> None:
    name, tag = data.draw(st.sampled_from(EVENT_TYPES))
    payload = data.draw(shaped(tag))
    decodes_or_typed_error(CODECS[name], payload, tag)
    # A payload under another type's name is refused, not mistaken for it.
    other = data.draw(st.sampled_from(EVENT_TYPES))
    decodes_or_typed_error(CODECS[other[0]], payload, other[1])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_signed_envelopes_with_any_header_are_opened_or_refused(keys: Keys, data: st.DataObject) -> None:
    header = data.draw(st.dictionaries(st.sampled_from(list(FIELDS_OF_HEADER)), values, max_size=16))
    raw_header = msgspec.msgpack.encode(header)
    ciphertext = data.draw(st.binary(max_size=100))
    stored = encode_sealed(
        SealedEvent(raw_header, ciphertext, keys.signer.sign(signed_message(raw_header, ciphertext)))
    )
    assert open_fully(keys, stored) is None  # a random header never opens


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_valid_envelopes_around_wrong_payloads_end_in_the_event_or_a_typed_error(
    keys: Keys, data: st.DataObject
) -> None:
    name, tag = data.draw(st.sampled_from(EVENT_TYPES))
    payload = data.draw(shaped(tag) | st.binary(max_size=200))
    stored, _ = seal(
        signer=keys.signer,
        producer="lifecycle",
        data_key=keys.data_key,
        aggregate_type="agent",
        aggregate_id="a1",
        aggregate_version=1,
        event_type=tag,
        schema_version=1,
        payload=payload,
        prev_hash=bytes(32),
    )
    plain = open_fully(keys, stored)
    assert plain == payload
    decodes_or_typed_error(CODECS[name], plain, tag)
    # One flipped byte anywhere: refused with a typed error.
    at = data.draw(st.integers(0, len(stored) - 1))
    flipped = stored[:at] + bytes([stored[at] ^ 0x01]) + stored[at + 1 :]
    assert open_fully(keys, flipped) is None


FIELDS_OF_HEADER = (
    "version",
    "event_id",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "event_type",
    "schema_version",
    "occurred_at",
    "producer",
    "signing_key_id",
    "prev_hash",
    "causation_id",
    "correlation_id",
    "data_key_id",
    "nonce",
    "extra",
)
