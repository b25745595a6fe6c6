"""Aggregate snapshots in the ``SNAPSHOTS`` stream (one message per ``snap.<type>.<id>`` subject).

A snapshot holds an aggregate's state at a chain tip, encrypted with the aggregate's data key and
signed by the writing service, so a snapshot can neither leak nor forge state. A snapshot that does
not verify is ignored: the aggregate is then rebuilt from its full history.
"""

from __future__ import annotations

import struct
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient

from symbi_common.crypto import Signer, new_nonce
from symbi_common.datakeys import DataKeys
from symbi_common.envelope import subject_for
from symbi_common.errors import SymbiError
from symbi_common.keyring import KeyRegistry
from symbi_common.sealing import ChainTip
from symbi_common.streams import SNAPSHOTS_STREAM, last_on_subject

S = TypeVar("S")
_DOMAIN = b"symbi.snapshot.v1\x00"


class SnapshotHeader(msgspec.Struct, frozen=True):
    aggregate_type: str
    aggregate_id: str
    sequence: int
    version: int
    hash: bytes
    signing_key_id: str
    data_key_id: str
    nonce: bytes


class StoredSnapshot(msgspec.Struct, frozen=True, array_like=True):
    header: bytes
    ciphertext: bytes
    signature: bytes


_enc = msgspec.msgpack.Encoder()
_header_dec = msgspec.msgpack.Decoder(SnapshotHeader)
_stored_dec = msgspec.msgpack.Decoder(StoredSnapshot)


def _signed(header: bytes, ciphertext: bytes) -> bytes:
    return _DOMAIN + struct.pack(">I", len(header)) + header + ciphertext


def snapshot_subject(aggregate_type: str, aggregate_id: str) -> str:
    return f"snap.{aggregate_type}.{aggregate_id}"


class SnapshotStore:
    """Writes and reads verified snapshots."""

    def __init__(self, nc: NatsClient, *, signer: Signer, registry: KeyRegistry, datakeys: DataKeys) -> None:
        self.nc = nc
        self.signer = signer
        self.registry = registry
        self.datakeys = datakeys

    async def save(
        self, aggregate_type: str, aggregate_id: str, tip: ChainTip, state: Any, *, data_key: str | None = None
    ) -> None:
        """Store ``state`` at ``tip``, sealed with the data key ``data_key`` names (by default the aggregate's own:
        the one its events are sealed with, so erasing it shreds the snapshot as well)."""
        key = await self.datakeys.current(data_key or f"{aggregate_type}.{aggregate_id}")

        header = SnapshotHeader(
            aggregate_type,
            aggregate_id,
            tip.sequence,
            tip.version,
            tip.hash,
            self.signer.key_id,
            key.key_id,
            new_nonce(),
        )
        hb = _enc.encode(header)
        _, ct = key.encrypt(_enc.encode(state), hb, header.nonce)
        data = _enc.encode(StoredSnapshot(hb, ct, self.signer.sign(_signed(hb, ct))))
        await self.nc.request(snapshot_subject(aggregate_type, aggregate_id), data, timeout=5.0)

    async def load(self, aggregate_type: str, aggregate_id: str, state_type: type[S]) -> tuple[S, ChainTip] | None:
        raw = await last_on_subject(self.nc, SNAPSHOTS_STREAM, snapshot_subject(aggregate_type, aggregate_id))
        if raw is None:
            return None
        try:
            stored = _stored_dec.decode(raw.data)
            header = _header_dec.decode(stored.header)
            if (header.aggregate_type, header.aggregate_id) != (aggregate_type, aggregate_id):
                return None
            verifier = self.registry.authorise(header.signing_key_id, subject_for(aggregate_type, aggregate_id))
            if not verifier.verify(_signed(stored.header, stored.ciphertext), stored.signature):
                return None
            key = await self.datakeys.by_id(header.data_key_id)
            plain = key.decrypt(header.nonce, stored.ciphertext, stored.header)
            if plain is None:
                return None
            state = msgspec.msgpack.decode(plain, type=state_type)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, SymbiError):
            return None
        return state, ChainTip(header.sequence, header.version, header.hash)
