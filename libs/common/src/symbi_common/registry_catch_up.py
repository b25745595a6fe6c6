"""Verifying an event again once the key registry has caught up with the ``REGISTRY`` stream.

After a signing-key rotation another process signs with the new key as soon as *its* registry follower applied
the version, maybe before this process's follower has (:mod:`symbi_common.livekeys`). A follower that meets an
event naming a key its registry does not know yet (:class:`~symbi_common.errors.UnknownSigningKey`) does not
refuse it on the spot: :meth:`RegistryCatchUp.verified` has the process's registry catch up with the stream
(:meth:`LiveKeys.catch_up <symbi_common.livekeys.LiveKeys.catch_up>`) and verifies the event once more. Only a
key still unknown then gets the follower's usual treatment (refused, or its policy set halted: fail closed): a
version naming a key is stored on the stream before any event signed with it.

One catch-up per batch is enough (a :class:`RegistryCatchUp` is made for each batch): it reads the stream after
every event of the batch was stored. A catch-up that cannot read the stream raises :class:`RegistryCatchUpFailed`,
an :class:`~symbi_common.errors.InfrastructureError` that says nothing about the event: the follower lets it
through, and applies the batch again (from its position) instead of refusing the event. The normal path costs
nothing: the stream is read only when a key is unknown.

The projection runner, the policy follower, the scheduler's model, the context index and the policy service's
agent follower use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from symbi_common.errors import InfrastructureError, UnknownSigningKey

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Brings the process's key registry up to the newest version on ``REGISTRY`` (a service runtime's
#: ``keys.catch_up``); raises :class:`InfrastructureError` if it cannot read the stream.
CatchUp = Callable[[], Awaitable[object]]


class RegistryCatchUpFailed(InfrastructureError):
    """An event names a signing key this process does not know, and the key registry could not catch up with the
    ``REGISTRY`` stream: nothing can be said about the event yet, the follower applies its batch again."""

    code = "registry_catch_up_failed"
    http_status = 503


class RegistryCatchUp:
    """The key registry's catch-up for one batch of a follower: at most once (``catch_up`` None: never)."""

    def __init__(self, catch_up: CatchUp | None, *, follower: str) -> None:
        self._catch_up = catch_up
        self.follower = follower

    async def verified(self, step: Callable[[], Awaitable[T]], *, subject: str, sequence: int) -> T:
        """``step()`` (which verifies the event at ``sequence``, and more); if it raises :class:`UnknownSigningKey`
        and the registry has not caught up in this batch yet, the registry catches up and ``step()`` runs once more.

        ``step`` must have changed nothing when it raises :class:`UnknownSigningKey` (verification comes first).
        Raises what the (last) ``step()`` raises, or :class:`RegistryCatchUpFailed`.
        """
        try:
            return await step()
        except UnknownSigningKey:
            catch_up, self._catch_up = self._catch_up, None
            if catch_up is None:  # none, or caught up in this batch already: the registry does not know the key
                raise
        try:
            await catch_up()
        except InfrastructureError as exc:
            raise RegistryCatchUpFailed(
                f"{self.follower}: the event at {sequence} ({subject}) names a signing key this process does not "
                f"know, and the key registry could not catch up: {exc}; the batch is applied again",
                follower=self.follower,
                sequence=sequence,
                subject=subject,
            ) from exc
        log.info(
            "signing key unknown: key registry caught up, applying the event again",
            follower=self.follower,
            sequence=sequence,
            subject=subject,
        )
        return await step()


__all__ = ["CatchUp", "RegistryCatchUp", "RegistryCatchUpFailed"]
