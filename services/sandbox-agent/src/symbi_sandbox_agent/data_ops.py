"""``data.read`` / ``data.list`` / ``data.write`` over the agent channel (docs/agent-protocol.md, "Data").

A request names a path under ``/symbi/data`` (``<root>/<dir>/<file>``). The gateway serves it only within
the run's own filesystem grants — the mounts its sandbox was started with (:mod:`.grants`) — and a write
only within a grant of mode ``read_write`` (else the typed error ``read_only``), then asks the one enforcer:
``data.read`` (read, list) or ``data.write`` on ``Data::"<root>"`` (with the root's ``classification``), the
request's context plus ``access = "gateway"``, ``path`` (under the root) and ``size_bytes``, as the agent
of the listener. Those three are the runtime's: an agent's own values of them are dropped, never decided
on. ``size_bytes`` is what a write writes or what a read may return (the file's size as it is just before
the decision, from ``offset``, at most ``length`` or the op's maximum — and the read never returns more);
a listing has none. Allowed, the file is read or written on the host (:mod:`.data_files`: no symlink is
followed, sizes capped); every request, allowed or not, is recorded as ``execution.action`` — an allowed
one with the size and SHA-256 of the bytes read or written. An allowed request whose record could not be
stored (its context over the event size limit) is refused ``too_large`` before the disk is touched.

The disk is touched on a small pool of threads of the data operations' own (:data:`DATA_THREADS`, one per
daemon), at most :data:`RUN_DATA_THREADS` of them for one run at once: a slow listing waits only for other
data requests, never holds up what runs on asyncio's default executor (egress DNS, the model gateway).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from symbi_common.decisions import DecisionRecord, DecisionRequest, Deny, EntityRef
from symbi_common.policy.hooks import UNDECIDED
from symbi_common.telemetry import traced
from symbi_contracts.agent_protocol import (
    ARGS,
    MAX_DATA_BYTES,
    MAX_LIST_ENTRIES,
    DataList,
    DataRead,
    DataWrite,
    Reply,
    Request,
    Result,
    error,
)
from symbi_contracts.sandbox_agent.events import ActionOutcome

from symbi_sandbox_agent import data_files
from symbi_sandbox_agent.actions import check_against_schema
from symbi_sandbox_agent.data_files import DataFileError
from symbi_sandbox_agent.errors import ActionRequestError
from symbi_sandbox_agent.grants import BadDataPath, DataMount, NotGranted, locate
from symbi_sandbox_agent.recorder import Fits, fits_nothing, unrecordable

if TYPE_CHECKING:
    from symbi_common.decisions import Decision

    from symbi_sandbox_agent.run import Running

#: The operations this module answers (the protocol server hands them over).
DATA_OPS = frozenset({"data.read", "data.list", "data.write"})
RETRY_AFTER_S = 1.0
#: Context keys only the runtime sets (an agent's own are dropped).
RUNTIME_CONTEXT = frozenset({"access", "path", "size_bytes"})
#: Threads the data operations of this daemon share (started when first needed; joined at exit).
DATA_THREADS = 4
#: How many of them one run's requests may use at once (the others wait in the event loop).
RUN_DATA_THREADS = 2
_THREADS = ThreadPoolExecutor(max_workers=DATA_THREADS, thread_name_prefix="symbi-data")
T = TypeVar("T")

Record = Callable[
    [int, str, str, dict[str, Any], DecisionRecord | None, ActionOutcome, str],
    Awaitable[None],
]


class DataGateway(Protocol):
    """What the data operations need of the run's gateway (``gateway.ActionGateway``): its run (whose spec
    holds the mounts) and a decision through the one enforcer."""

    run: Running

    @property
    def task_id(self) -> str: ...

    async def decide(self, question: DecisionRequest) -> tuple[Decision, DecisionRecord]: ...


class DataOps:
    """Serves one run's data requests: ``gateway`` decides, ``record`` stores ``execution.action`` (the
    protocol server's); a request whose record would not fit (``fits``) is refused ``too_large``, not performed."""

    def __init__(self, gateway: DataGateway, record: Record, fits: Fits = fits_nothing) -> None:
        self.gateway = gateway
        self.record = record
        #: Whether a request's record can be stored, asked before it is performed (``ProtocolServer.record_fits``).
        self.fits = fits
        self._turns = asyncio.Semaphore(RUN_DATA_THREADS)

    @property
    def mounts(self) -> tuple[DataMount, ...]:
        return self.gateway.run.spec.data_mounts

    async def answer(self, seq: int, request: Request, agent_id: str) -> Reply:
        op = request.op
        action = "data.write" if op == "data.write" else "data.read"
        try:
            args = msgspec.convert(request.args, ARGS[op])
        except msgspec.ValidationError as exc:
            return await self._fail(seq, request, action, "", {}, "malformed_request", f"args of {op}: {exc}")
        try:
            mount, parts = locate(args.path, self.mounts)
        except NotGranted as err:
            given = {"path": args.path[:256]}
            return await self._fail(seq, request, action, "", given, "denied", str(err), reason="no_grant")
        except BadDataPath as err:
            return await self._fail(seq, request, action, "", {}, "malformed_request", str(err))
        path = "/".join((*mount.parts, *parts))
        context: dict[str, Any] = {k: v for k, v in request.context.items() if k not in RUNTIME_CONTEXT}
        context.update(access="gateway", path=path)
        content = b""
        if isinstance(args, DataWrite):
            if mount.read_only:
                message = f"{mount.target} is granted read-only; data.write needs a grant with mode read_write"
                return await self._fail(seq, request, action, mount.root, context, "read_only", message)
            try:
                content = _decode(args)
            except ValueError as exc:
                return await self._fail(seq, request, action, mount.root, context, "malformed_request", str(exc))
            if len(content) > MAX_DATA_BYTES:
                message = f"one data.write writes at most {MAX_DATA_BYTES} bytes (got {len(content)}); append in pieces"
                return await self._fail(
                    seq, request, action, mount.root, context, "too_large", message, max_bytes=MAX_DATA_BYTES
                )
            context["size_bytes"] = len(content)
        elif isinstance(args, DataRead):
            if args.length is not None and not 0 <= args.length <= MAX_DATA_BYTES:
                message = f"one data.read returns 0 to {MAX_DATA_BYTES} bytes (asked {args.length}); read in pieces"
                return await self._fail(
                    seq, request, action, mount.root, context, "too_large", message, max_bytes=MAX_DATA_BYTES
                )
            base, above = mount.anchor
            context["size_bytes"] = await self._io(
                data_files.readable, base, (*above, *parts), args.offset, args.length, MAX_DATA_BYTES
            )
        attrs = {"classification": mount.classification} if mount.classification else {}
        question = DecisionRequest(
            principal=EntityRef(type="Agent", id=agent_id),
            action=action,
            resource=EntityRef(type="Data", id=mount.root, attrs=attrs),
            context=context,
        )
        try:
            check_against_schema(question)
        except ActionRequestError as err:
            return await self._fail(seq, request, action, mount.root, context, "invalid_request", err.message)
        attributes: dict[str, str | int] = {"symbi.task_id": self.gateway.task_id, "symbi.action.seq": seq}
        with traced(f"action.{op}", attributes=attributes) as span:
            decision, record = await self.gateway.decide(question)
            span.set_attribute("symbi.decision", record.effect)
        if isinstance(decision, Deny):
            if decision.code in UNDECIDED:
                detail = f"unavailable: {decision.code}: {decision.reason}"
                await self.record(seq, action, mount.root, context, record, "failed", detail)
                return error(request.id, "unavailable", decision.reason, retry_after=RETRY_AFTER_S, cause=decision.code)
            await self.record(seq, action, mount.root, context, record, "refused", decision.reason)
            return error(
                request.id,
                "denied",
                f"{op} of {path!r} in data root {mount.root} is denied: {decision.reason}",
                policies=list(decision.policies),
                policy_version=decision.policy_version,
            )
        if not self.fits(seq, action, mount.root, context, record):  # no action without its record
            message = unrecordable(action)
            await self.record(seq, action, "", {}, record, "failed", f"too_large: {message}")
            return error(request.id, "too_large", message)
        try:
            result, done = await self._io(self._perform, args, mount, parts, content, context.get("size_bytes"))
        except OSError as exc:  # (no space, over quota, a file changed under it …): failed, recorded, typed
            message = f"{op} of {path!r} failed: {exc.strerror or type(exc).__name__}"
            await self.record(seq, action, mount.root, context, record, "failed", f"unavailable: {message}")
            return error(request.id, "unavailable", message)
        except DataFileError as err:
            await self.record(seq, action, mount.root, context, record, "failed", f"{err.code}: {err.message}")
            return error(request.id, err.code, err.message)
        await self.record(seq, action, mount.root, context, record, "allowed", f"{op} {done}")
        return Result(id=request.id, result=result)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the data operations' threads, in this run's turn."""
        async with self._turns:
            call = functools.partial(contextvars.copy_context().run, fn, *args)
            return await asyncio.get_running_loop().run_in_executor(_THREADS, call)

    def _perform(
        self, args: Any, mount: DataMount, parts: tuple[str, ...], content: bytes, decided: int | None
    ) -> tuple[dict[str, Any], str]:
        """The result, and what the record says was done (sizes and digests, never the content); a read
        returns at most the ``decided`` size."""
        shown = "/".join((mount.root, *mount.parts, *parts))
        if not parts and not isinstance(args, DataList):
            raise DataFileError("invalid_request", f"{shown} is a granted directory, not a file: use data.list")
        base, above = mount.anchor
        parts = (*above, *parts)
        if isinstance(args, DataList):
            limit = max(0, min(args.limit, MAX_LIST_ENTRIES))
            entries, truncated = data_files.listing(base, parts, limit)
            return {"path": shown, "entries": entries, "truncated": truncated}, f"{len(entries)} entries"
        if isinstance(args, DataWrite):
            owner = self.gateway.run.spec.owner
            size = data_files.write(base, parts, content, args.mode, owner)
            sha = data_files.digest(content)
            result = {"path": shown, "written": len(content), "size": size, "sha256": sha}
            return result, f"{args.mode} {len(content)} bytes sha256={sha}"
        assert isinstance(args, DataRead)
        data, size = data_files.read(base, parts, args.offset, args.length, MAX_DATA_BYTES, most=decided)
        sha = data_files.digest(data)
        if args.encoding == "base64":
            text = base64.b64encode(data).decode()
        else:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                raise DataFileError(
                    "invalid_request", f"{shown} is not UTF-8 text; read it with encoding 'base64'"
                ) from None
        result = {
            "path": shown,
            "size": size,
            "offset": args.offset,
            "length": len(data),
            "sha256": sha,
            "encoding": args.encoding,
            "content": text,
        }
        return result, f"{len(data)} bytes at {args.offset} sha256={sha}"

    async def _fail(
        self,
        seq: int,
        request: Request,
        action: str,
        resource: str,
        context: dict[str, Any],
        code: str,
        message: str,
        **extra: Any,
    ) -> Reply:
        """Record and answer a request refused before any decision."""
        await self.record(seq, action, resource, context, None, "failed", f"{code}: {message}")
        return error(request.id, code, message, **extra)


def _decode(args: DataWrite) -> bytes:
    if args.encoding == "utf-8":
        return args.content.encode()
    try:
        return base64.b64decode(args.content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"content is not base64: {exc}") from None
