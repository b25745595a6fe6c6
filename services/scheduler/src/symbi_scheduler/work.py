"""The ``WORK`` stream: work items for the sandbox-agents (``work.<host_id>``, work-queue retention).

Created by whichever side starts first, with the same configuration on both sides.
"""

from __future__ import annotations

from typing import Any

import nats.js.errors
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from symbi_common.settings import Settings

WORK_STREAM = "WORK"


async def ensure_work_stream(js: Any, settings: Settings) -> None:
    try:
        await js.stream_info(WORK_STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=WORK_STREAM,
        subjects=["work.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=settings.nats.replicas,
        duplicate_window=settings.nats.duplicate_window_s,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.stream_info(WORK_STREAM)  # a sandbox-agent created it meanwhile
