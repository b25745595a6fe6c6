"""Key registry versions to and from the running runtime: publish on ``REGISTRY``, read its history.

``symbi keys rotate`` / ``revoke`` write the new root-signed version to the key files and then
publish it with the operator NATS credential, so running services apply it at once. Where no
runtime answers, the files are the only copy until ``symbi up`` (or ``symbi keys publish``)
publishes them.
"""

from __future__ import annotations

from pathlib import Path

import nats
import nats.errors
from symbi_common.key_material import read_key_file
from symbi_common.nats_client import server_options
from symbi_common.registry_stream import HistoryEntry, check_history, publish, read_history, read_signed_files
from symbi_common.streams import EVENTS_STREAM

#: Where ``symbi up`` leaves the operator's NATS URL, relative to its home.
OPERATOR_URL_FILE = Path("run") / "nats-operator.url"


def operator_nats_url(keys_dir: Path, explicit: str | None = None) -> str | None:
    """``explicit``, else the URL of the runtime whose home holds ``keys_dir`` (``<home>/keys``), else ``None``."""
    if explicit:
        return explicit
    try:
        return (keys_dir.resolve().parent / OPERATOR_URL_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


async def publish_keyring(nats_url: str, keys_dir: Path) -> int | None:
    """Publish the keyring's registry version to ``REGISTRY`` if it is newer there; its version if published."""
    root_public_key = read_key_file(keys_dir / "root.pub")
    nc = await nats.connect(**server_options(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        return await publish(nc, read_signed_files(keys_dir), root_public_key)
    finally:
        await nc.drain()


async def registry_history(nats_url: str, keys_dir: Path) -> list[HistoryEntry]:
    """Every version on ``REGISTRY``, checked against the keyring's ``root.pub``."""
    root_public_key = read_key_file(keys_dir / "root.pub")
    nc = await nats.connect(**server_options(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        return check_history(await read_history(nc), root_public_key)
    finally:
        await nc.drain()


async def events_last_sequence(nats_url: str) -> int:
    """The ``EVENTS`` stream's last sequence now (read with the operator credential)."""
    nc = await nats.connect(**server_options(nats_url), connect_timeout=5, allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info(EVENTS_STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.drain()


#: What publishing can fail with besides a refused version: no server, no permission, a timeout.
PUBLISH_ERRORS = (OSError, TimeoutError, nats.errors.Error)
