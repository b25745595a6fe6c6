"""The ``WORK`` stream: work items for the sandbox-agents (``work.<host_id>``, work-queue retention).

Provisioned by the NATS admin (``symbi_common.stream_provisioning.provision_streams``); services only check it exists.
"""

from __future__ import annotations

from typing import Any

from symbi_common.settings import Settings
from symbi_common.stream_provisioning import require_streams
from symbi_common.streams import HOSTS_BUCKET, SCHEDULER_BUCKET, WORK_STREAM

__all__ = ["WORK_STREAM", "ensure_work_stream"]


async def ensure_work_stream(js: Any, settings: Settings) -> None:
    """Refuse to start without the ``WORK`` stream (a service never creates streams)."""
    del settings
    await require_streams(js, (WORK_STREAM, "KV_" + HOSTS_BUCKET, "KV_" + SCHEDULER_BUCKET))
