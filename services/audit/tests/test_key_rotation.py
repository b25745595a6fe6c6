"""A rotated audit key signs the next checkpoints without a restart; earlier checkpoints stay valid."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NatsClient
from symbi_common.key_material import read_key_file
from symbi_common.keyfiles import revoke_key, rotate_service_key
from symbi_common.registry_stream import publish, read_signed_files
from symbi_tlog.notes import verify_checkpoint

from .conftest import Running, Writer


async def test_checkpoints_after_a_rotation_are_signed_by_the_new_key(
    running: Running, writer: Writer, provisioned: NatsClient, keys_dir: Path
) -> None:
    before = await running.checkpoint_covering((await writer.agent("k1", 2))[-1])
    old_key = running.service.signer

    new_key = rotate_service_key(keys_dir, "audit")
    await publish(provisioned, read_signed_files(keys_dir), read_key_file(keys_dir / "root.pub"))
    for _ in range(100):
        if running.service.runner.key_name == new_key.key_id:
            break
        await asyncio.sleep(0.1)
    assert running.service.runner.key_name == new_key.key_id, "the audit service did not take its rotated key"

    after = await running.checkpoint_covering((await writer.agent("k2", 2))[-1])
    note = str(after["note"])
    verify_checkpoint(note, key_name=new_key.key_id, public_key=new_key.public_key)  # raises if not signed by it
    assert old_key.key_id not in note
    # Reports check checkpoints against every audit key the registry has not revoked: the checkpoint signed
    # before the rotation (old key, now retired) and the one after are both valid.
    for cp in (before, after):
        stored = await running.service.store.checkpoint(int(str(cp["size"])))
        assert stored is not None
        assert (await running.service.checkpoint_ref(stored)).signature_valid


async def test_a_revocation_reaches_back_to_events_already_verified(
    running: Running, writer: Writer, provisioned: NatsClient, keys_dir: Path
) -> None:
    """Events a key signed are verified as they arrive; the key is then revoked as of an earlier stream position
    (it leaked before anyone noticed). The events it signed after that position lose their 'verified' mark and
    each gets a key_revoked finding; those before keep theirs."""
    first, *later = await writer.agent("leaky", 4)
    await running.wait_for(later[-1])
    key_id = writer.lifecycle.signer.key_id
    revoke_key(keys_dir, key_id, after_sequence=first)
    await publish(provisioned, read_signed_files(keys_dir), read_key_file(keys_dir / "root.pub"))

    async def refused() -> list[int]:
        items = (await running.json("/v1/audit/findings", kind="key_revoked"))["items"]
        return sorted(f["sequence"] for f in items)

    for _ in range(100):
        if await refused() == later:
            break
        await asyncio.sleep(0.1)
    assert await refused() == later
    events = {e["sequence"]: e["verified"] for e in (await running.json("/v1/audit/events", agent="leaky"))["items"]}
    assert events == {first: True, **dict.fromkeys(later, False)}
