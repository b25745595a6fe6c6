"""A running service's keys kept current with the key registry on the ``REGISTRY`` stream.

Each service follows ``registry.version`` (a small ordered consumer, like a KV watch). For every
version it checks the root signature against the ``root.pub`` it pinned at start and that the
version is newer than the one in use; then it switches its :class:`~symbi_common.keyring.KeyRegistry`
in place, so everything holding it (event store, snapshots, data keys, readers) verifies with the
new version from then on. A version that is not newer is a :class:`~symbi_common.errors.RegistryRollback`:
logged, reported in the health report's recent errors, and the version in use stays.

Its own keys follow the registry: ``symbi keys rotate`` writes the new private key into the
service's directory before it publishes the version, and the service loads it when the registry
names a new active key (signing) or wrap key for it. A sandbox-agent daemon started with its host's
own key (``symbi keys add-host``) follows that host's active key instead, and the service's wrap key.
Until a revoked signing key is replaced, the event store refuses to sign with it
(:class:`~symbi_common.errors.SigningKeyRefused`). When a wrap key changes — its own or a reader's of
what it writes — the service re-seals its data keys to the readers' current wrap keys from its own
copies; a service whose own wrap key rotated opens its copies with the previous key (kept in
``wrap.old.key`` until then) and deletes that file afterwards.

Another process may sign with a rotated key as soon as *its* follower applied the version, before this
process's follower has: an event it signed then names a key this registry does not know yet. Whoever
verifies such an event (the projection runner) does not refuse it on the spot but asks the service's registry
to :meth:`~LiveKeys.catch_up`: it reads the ``REGISTRY`` stream's newest message now (from the stream's leader)
and applies what it has not, then the event is verified again.
A version is always stored on the stream before any event signed with its new key (a signer only learns
the key from the stream), so a key still unknown after that is unknown to the registry: refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import DeliverPolicy

from symbi_common.crypto import Signer, WrapKey
from symbi_common.datakeys import DataKeys
from symbi_common.errors import InfrastructureError, KeyringError
from symbi_common.keyfiles import OLD_WRAP_KEY_FILE
from symbi_common.keyring import (
    SERVICE_SUBJECTS,
    KeyRegistry,
    RegistryDocument,
    load_signer,
    load_wrap_key,
    readers_of,
)
from symbi_common.ordered_pull import OrderedPull
from symbi_common.registry_stream import REGISTRY_SUBJECT, check_history, decode_signed, newest_version, read_history
from symbi_common.streams import REGISTRY_STREAM

log = structlog.get_logger(__name__)

#: How often a service looks again for a private key the registry names but its directory lacks yet.
KEY_FILE_RETRY_S = 1.0
#: How long following waits for a new version while nothing is to be retried.
IDLE_WAIT_S = 30.0
#: The longest a catch-up with the ``REGISTRY`` stream may take (:meth:`LiveKeys.catch_up`).
CATCH_UP_TIMEOUT_S = 3.0


def written_types(service: str) -> tuple[str, ...]:
    """The aggregate types ``service`` writes (``evt.<type>.>`` in :data:`SERVICE_SUBJECTS`)."""
    return tuple(p.split(".")[1] for p in SERVICE_SUBJECTS.get(service, ()))


def wrap_keys(doc: RegistryDocument) -> dict[str, bytes | None]:
    """Each service's current wrap public key in ``doc``."""
    registry = KeyRegistry(doc)
    out: dict[str, bytes | None] = {}
    for service in SERVICE_SUBJECTS:
        active = registry.active_key(service)
        out[service] = active.wrap_public_key if active is not None else None
    return out


class LiveKeys:
    """Follows the ``REGISTRY`` stream for one service and keeps its registry and own keys current."""

    def __init__(
        self,
        service: str,
        registry: KeyRegistry,
        *,
        root_public_key: bytes,
        signing_key_path: Path,
        wrap_key_path: Path,
        signer: Signer,
        datakeys: DataKeys,
        on_signer: Callable[[Signer], None],
        on_error: Callable[[str], None] = lambda _text: None,
        host: str | None = None,
    ) -> None:
        self.service = service
        #: The sandbox host whose own key this daemon signs with (None: the service's key). It follows that
        #: host's active key; its wrap key stays the service's.
        self.host = host
        self.registry = registry
        self.root_public_key = root_public_key
        self.signing_key_path = signing_key_path
        self.wrap_key_path = wrap_key_path
        self.old_wrap_key_path = wrap_key_path.with_name(OLD_WRAP_KEY_FILE)
        self.signer = signer
        self.datakeys = datakeys
        self._on_signer = on_signer
        self._on_error = on_error
        #: Set while the registry names a key of ours that the key directory does not hold yet.
        self.waiting_for_key = False
        self._reseal_needed = False
        #: The stream sequence after the last ``REGISTRY`` message applied or refused (by following or catching up).
        self._next_sequence = 1
        self._missing = ""
        self._nc: Any = None

    # --- start-up ---------------------------------------------------------------------------------

    async def start(self, nc: Any) -> None:
        """Catch up with the newest valid version on the stream before serving.

        A newer version there than in the key files is used; the service's own keys must then
        match it, or the start fails (:class:`KeyringError`). Problems in the stream's history
        (rollback attempts, forgeries) are logged. Data keys are re-sealed once following starts:
        wrap keys may have changed while the service was down.
        """
        self._nc = nc
        history = await read_history(nc)
        for entry in check_history(history, self.root_public_key):
            if entry.problem is not None:
                log.warning("REGISTRY stream holds a refused version", sequence=entry.sequence, problem=entry.problem)
        newest, last_sequence = await newest_version(nc, self.root_public_key, history)
        self._next_sequence = last_sequence + 1
        if newest is not None and newest.verified(self.root_public_key).version > self.registry.version:
            self.registry.advance(newest.registry, newest.signature, self.root_public_key)
            log.info("key registry newer on the stream than in the key files", version=self.registry.version)
            self._load_own_keys(strict=True)
        self._reseal_needed = True

    # --- following --------------------------------------------------------------------------------

    async def follow(self, js: Any) -> None:
        """Apply every version published after :meth:`start`; runs until cancelled."""
        # From the first message after what start() read: nothing is missed, nothing applied twice.
        feed = OrderedPull(
            js,
            stream=REGISTRY_STREAM,
            subject=REGISTRY_SUBJECT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            start_sequence=self._next_sequence,
        )
        await feed.open()
        try:
            await self.reseal_if_needed()
            while True:
                # Idle, nothing to retry: wake only for a new version (or the pull request's renewal).
                retrying = self.waiting_for_key or self._reseal_needed
                msgs = await feed.take(KEY_FILE_RETRY_S if retrying else IDLE_WAIT_S)
                if not msgs:
                    if self.waiting_for_key:
                        self._load_own_keys(strict=False)
                    await self.reseal_if_needed()
                    continue
                for msg in msgs:
                    if self._take(int(msg.metadata.sequence.stream), bytes(msg.data)):
                        await self.reseal_if_needed()
        finally:
            await feed.close()

    # --- catching up on demand --------------------------------------------------------------------

    async def catch_up(self, timeout: float = CATCH_UP_TIMEOUT_S) -> int:
        """Apply now every ``REGISTRY`` message stored after the last one this registry applied; returns how many
        versions it applied (0: the registry was current).

        For a key this process does not know yet: another process may sign with a new version's key before this
        process's follower has delivered that version. Reads the stream's last message, then the ones between,
        from the stream's leader (a direct get may be answered by a replica that lags), all within ``timeout``;
        raises :class:`InfrastructureError` if it cannot (nothing is applied then that was not before). The
        follower passes over what this applied. Re-sealing after a wrap key change is left to the follower.
        """
        if self._nc is None:
            raise RuntimeError("LiveKeys.catch_up before start")
        js = self._nc.jetstream(timeout=timeout)
        applied = 0
        try:
            async with asyncio.timeout(timeout):
                try:
                    last = await js.get_last_msg(REGISTRY_STREAM, REGISTRY_SUBJECT)
                except nats.js.errors.NotFoundError:
                    return 0  # no version on the stream at all
                if int(last.seq) < self._next_sequence:
                    return 0
                messages = []
                sequence = self._next_sequence
                while sequence < int(last.seq):
                    msg = await js.get_msg(REGISTRY_STREAM, seq=sequence, subject=REGISTRY_SUBJECT, next=True)
                    if int(msg.seq) >= int(last.seq):
                        break
                    messages.append(msg)
                    sequence = int(msg.seq) + 1
                messages.append(last)
        except (TimeoutError, nats.errors.Error) as exc:
            raise InfrastructureError(
                f"cannot read the key registry's newest version from the {REGISTRY_STREAM} stream: {exc!r}"
            ) from exc
        for msg in messages:  # no await in between: the follower cannot apply one of them meanwhile
            applied += self._take(int(msg.seq), bytes(msg.data or b""))
        if applied:
            log.info("key registry caught up on demand", version=self.registry.version, applied=applied)
        return applied

    def _take(self, sequence: int, data: bytes) -> bool:
        """Apply the ``REGISTRY`` message at stream ``sequence`` unless it was applied (or refused) already."""
        if sequence < self._next_sequence:
            return False  # caught up on demand before the follower delivered it
        self._next_sequence = sequence + 1  # (a restarted follow goes on from here)
        return self._advance(data)

    async def offer(self, data: bytes) -> bool:
        """Apply one ``REGISTRY`` message; ``False`` if it was refused (logged) or is the version in use."""
        if not self._advance(data):
            return False
        await self.reseal_if_needed()
        return True

    def _advance(self, data: bytes) -> bool:
        """Switch to the version in ``data`` and load this service's keys it names (no await: atomic in the loop);
        ``False`` if it was refused (logged) or is the version in use. Re-sealing, if needed, is the caller's."""
        try:
            signed = decode_signed(data)
            before = self.registry.advance(signed.registry, signed.signature, self.root_public_key)
        except KeyringError as exc:
            self._refused(exc)
            return False
        if before is None:
            return False
        new = self.registry.document
        log.info(
            "key registry advanced",
            version=new.version,
            previous=before.version,
            changes=[f"{c.kind} {c.service} {c.key_id}" for c in new.changes if c.version > before.version],
        )
        old_wraps, new_wraps = wrap_keys(before), wrap_keys(new)
        changed = {s for s in new_wraps if new_wraps[s] != old_wraps.get(s)}
        self._load_own_keys(strict=False)
        if changed & {self.service, *self._readers_of_mine()}:
            self._reseal_needed = True
        return True

    def _readers_of_mine(self) -> set[str]:
        return {r for t in written_types(self.service) for r in readers_of(t)}

    def _refused(self, exc: KeyringError) -> None:
        log.error("key registry version refused", error=str(exc), code=exc.code, version=self.registry.version)
        self._on_error(f"key registry: {exc}")

    # --- own keys ---------------------------------------------------------------------------------

    def _load_own_keys(self, *, strict: bool) -> None:
        """Load the private keys the registry now names for this service from its directory.

        ``strict`` (at start-up): a key that does not match is a :class:`KeyringError`. Live: it is
        logged and looked for again every second (the key file may arrive after the version).
        """
        active = self.registry.active_key(self.service, self.host)
        own = active if self.host is None else self.registry.active_key(self.service)
        missing: list[str] = []
        if active is None or own is None:
            whose = "this service" if active is not None or self.host is None else f"host {self.host}"
            missing.append(f"the registry has no active key for {whose}")
        else:
            if active.key_id != self.signer.key_id:
                signer = _try_load(load_signer, self.signing_key_path)
                if signer is not None and signer.key_id == active.key_id:
                    self.signer = signer
                    self._on_signer(signer)
                    log.info("signing with the rotated key", signing_key=signer.key_id)
                else:
                    missing.append(f"signing key {active.key_id} is not in {self.signing_key_path}")
            if own.wrap_public_key is not None and own.wrap_public_key != self.datakeys.wrap_public_key:
                wrap = _try_load(load_wrap_key, self.wrap_key_path)
                if wrap is not None and wrap.public_key == own.wrap_public_key:
                    self.datakeys.use_wrap_key(wrap)
                    self._reseal_needed = True
                    log.info("opening data keys with the rotated wrap key", wrap_key=wrap.key_id)
                else:
                    missing.append(f"the registry's wrap key is not in {self.wrap_key_path}")
        text = f"{self.service}: " + "; ".join(missing) if missing else ""
        if missing and strict:
            raise KeyringError(text + "; hand out the current keys (`symbi keys init` / the key directory)")
        if text and text != self._missing:  # once per state, not on every look
            log.error("key registry names keys this service does not hold yet", detail=text)
            self._on_error(text)
        self._missing = text
        self.waiting_for_key = bool(missing)

    async def reseal_if_needed(self) -> None:
        """Re-seal this service's data keys to the current wrap keys, then delete ``wrap.old.key``.

        A failure is logged and tried again with the next registry version (or start). The previous
        wrap key stays in memory until the process ends: other writers' copies sealed to it may not
        be re-sealed yet.
        """
        if not self._reseal_needed or self.waiting_for_key:
            return
        self._reseal_needed = False  # a failure is not retried until the next registry version
        try:
            changed = await self.datakeys.reseal(written_types(self.service))
        except Exception as exc:
            log.error("re-sealing data keys failed", error=repr(exc))
            self._on_error(f"re-sealing data keys: {exc!r}")
            return
        if changed:
            log.info("data keys re-sealed to the current wrap keys", changed=changed)
        if self.old_wrap_key_path.exists():
            try:
                self.old_wrap_key_path.unlink()
            except OSError as exc:  # a read-only key directory (a deployment's secret): the operator removes it
                log.warning("could not delete the previous wrap key", path=str(self.old_wrap_key_path), error=str(exc))
            else:
                log.info("previous wrap key deleted", path=str(self.old_wrap_key_path))


def previous_wrap_keys(wrap_key_path: Path) -> tuple[WrapKey, ...]:
    """The wrap key a rotation left in ``wrap.old.key`` next to ``wrap_key_path``, if any."""
    old = wrap_key_path.with_name(OLD_WRAP_KEY_FILE)
    return (load_wrap_key(old),) if old.exists() else ()


def _try_load(load: Callable[[Path], Any], path: Path) -> Any:
    """The key in ``path``, or None if it cannot be read yet (looked for again a second later)."""
    try:
        return load(path)
    except (KeyringError, OSError):  # (OSError: not there yet, or not readable by this process)
        return None


__all__ = [
    "CATCH_UP_TIMEOUT_S",
    "OLD_WRAP_KEY_FILE",
    "LiveKeys",
    "previous_wrap_keys",
    "written_types",
]
