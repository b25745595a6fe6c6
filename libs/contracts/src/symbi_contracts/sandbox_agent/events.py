"""The events the sandbox-agent writes: ``execution.<task_id>`` and ``host.<host_id>`` (see docs/contracts/tasks.md).

Readers (the scheduler) decode them with :data:`EXECUTION_CODEC` and :data:`HOST_CODEC`. Every
execution event carries the ``attempt`` it belongs to: one task's executions share one aggregate
across attempts (a task re-queued after its host was lost runs again as attempt n+1).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from symbi_common.decisions import DecisionRecord
from symbi_common.events import Event, EventCodec


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Resources the sandbox used, measured from its cgroup while it ran."""

    peak_memory_bytes: int = 0
    cpu_seconds: float = 0.0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    #: Bytes the sandbox sent and received through its egress proxy (docs/network.md).
    net_out_bytes: int = 0
    net_in_bytes: int = 0


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits a sandbox was started with (as enforced, after host defaults)."""

    memory_mb: int
    cpu_cores: float
    disk_io_mbps: int
    network_io_mbps: int
    execution_timeout_s: float
    pids: int
    output_cap_bytes: int
    scratch_mb: int


class OutputDigest(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes and SHA-256 of everything the workload printed (up to the cap), to check a reassembled result."""

    stdout_bytes: int = 0
    stdout_sha256: str = ""
    stderr_bytes: int = 0
    stderr_sha256: str = ""
    truncated: bool = False


class DataMountRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One filesystem grant mounted into the sandbox (docs/grants.md): the data root and the path under it,
    where it appears in the sandbox, ``read`` or ``read_write``, and the decisions that allowed it
    (``data.read``, and ``data.write`` for a writable one)."""

    root: str
    path: str
    target: str
    mode: str
    decisions: tuple[DecisionRecord, ...] = ()


class SecretFileRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One secret given to the sandbox as a file (docs/secrets.md): its name, version and path in the sandbox,
    and the ``secret.read`` decision that allowed it. Never the value."""

    name: str
    version: int
    target: str
    decision: DecisionRecord


class ExecutionStarted(Event, frozen=True, kw_only=True, tag="execution.started"):
    attempt: int
    host_id: str
    tier: Literal["tier1", "tier2"]
    runtime: str
    container: str
    image: str
    command: tuple[str, ...]
    limits: Limits
    hardening: dict[str, str]
    decision: DecisionRecord
    risk_score: float | None = None
    risk_factors: dict[str, float] = msgspec.field(default_factory=dict)
    started_at: float = 0.0
    #: The filesystem grants mounted into the sandbox, each with its decisions.
    data_mounts: tuple[DataMountRecord, ...] = ()
    #: The secrets given to the sandbox as files on tmpfs, each with its decision (never a value).
    secret_files: tuple[SecretFileRecord, ...] = ()
    #: The agent whose task this is: its data key seals the execution (``symbi_common.key_names``). Events
    #: written before it existed have none (their execution is sealed with a key of its own).
    agent_id: str = ""


Stream = Literal["stdout", "stderr"]


class ExecutionOutput(Event, frozen=True, kw_only=True, tag="execution.output"):
    """A chunk of a stream: ``data`` starts at byte ``offset`` of ``stream`` (at most 64 KiB of it)."""

    attempt: int
    stream: Stream
    offset: int
    data: bytes


class OutputChunk(msgspec.Struct, frozen=True, kw_only=True):
    """A chunk of a stream carried inside a terminal event (its ``tail``), as an ``execution.output`` would."""

    stream: Stream
    offset: int
    data: bytes


class _Ended(Event, frozen=True, kw_only=True):
    """Fields every terminal event carries. ``tail``: the output the run still held when it ended (at most one
    chunk per stream, each continuing its stream's ``execution.output`` chunks), carried here instead of in
    an ``execution.output`` event of its own. Events written before it existed have none."""

    attempt: int
    exit_code: int | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    output: OutputDigest = msgspec.field(default_factory=OutputDigest)
    duration_s: float = 0.0
    reason: str = ""
    tail: tuple[OutputChunk, ...] = ()


class ExecutionExited(_Ended, frozen=True, kw_only=True, tag="execution.exited"):
    pass


class ExecutionOomKilled(_Ended, frozen=True, kw_only=True, tag="execution.oom_killed"):
    memory_limit_bytes: int = 0


class ExecutionTimedOut(_Ended, frozen=True, kw_only=True, tag="execution.timed_out"):
    timeout_s: float = 0.0


class ExecutionKilled(_Ended, frozen=True, kw_only=True, tag="execution.killed"):
    """Stopped by us: ``reason`` is ``output_cap``, ``terminated`` (a command) or ``shutdown``."""


class ExecutionRefused(_Ended, frozen=True, kw_only=True, tag="execution.refused"):
    """Never started: the limits cannot be enforced, the tier is missing, or the policy denied it."""

    code: str = ""
    decision: DecisionRecord | None = None
    #: As :attr:`ExecutionStarted.agent_id`.
    agent_id: str = ""


class ExecutionFailed(_Ended, frozen=True, kw_only=True, tag="execution.failed"):
    """The sandbox could not run or vanished (e.g. its container disappeared while the daemon was down)."""


class ExecutionPaused(Event, frozen=True, kw_only=True, tag="execution.paused"):
    """The container is frozen: ``reason`` ``suspended`` (a command) or ``action_denied`` (the action gateway)."""

    attempt: int
    reason: str = ""


class ExecutionResumed(Event, frozen=True, kw_only=True, tag="execution.resumed"):
    """The container runs again: ``reason`` ``resumed`` (a command) or ``action_allowed`` (its pending action
    was decided again, allowed and performed)."""

    attempt: int
    reason: str = ""


ActionOutcome = Literal["allowed", "denied", "failed", "refused"]


class ExecutionAction(Event, frozen=True, kw_only=True, tag="execution.action"):
    """One decision of the action gateway: a workload's request, or the re-evaluation of a pending one.

        ``seq`` numbers the run's requests from 1 (the reply carries it too). ``outcome``: ``allowed`` (decided
        allow and performed), ``denied`` (the request stays pending, the container frozen), ``failed`` (no
        action happened: the request was malformed or unknown, or the performing service refused it; ``detail``
        starts with the error code), ``refused`` (decided deny and answered to the agent as the typed error
    ``denied`` over the channel protocol, docs/agent-protocol.md: nothing happened and the run goes on).
    ``decision`` is absent when the request was refused before any decision. ``agent_id`` is the agent the
    gateway served (named by the channel's listener, never by the request)."""

    attempt: int
    seq: int
    action: str
    resource: str = ""
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    decision: DecisionRecord | None = None
    outcome: ActionOutcome
    detail: str = ""
    agent_id: str = ""


EgressOutcome = Literal["allowed", "denied"]


class ExecutionEgress(Event, frozen=True, kw_only=True, tag="execution.egress"):
    """One connection of the sandbox through its egress proxy (docs/network.md), recorded when it ends.

    ``host`` and ``port`` are what the sandbox asked for, ``address`` the resolved address the connection was
    pinned to (or the blocked one that refused it), ``method`` ``CONNECT`` or the plain request's method,
    ``access`` ``proxy`` (HTTP(S)_PROXY), ``gateway`` (the SDK's ``http.request``) or ``internal`` (a host
    service answered it). ``outcome`` ``denied`` carries the ``reason`` code (``not_allowed``,
    ``blocked_address``, ``sni_mismatch``, ``host_mismatch``, ``ip_literal``, ``policy_denied`` …) and
    ``detail``; ``rule`` is the allow-list entry that matched. ``decision`` is Cedar's ``network.connect``.
    ``conn`` numbers the run's connections from 1 (0 in records written before they were numbered): a record
    is stored once per connection."""

    attempt: int
    host: str
    port: int
    address: str = ""
    method: str = ""
    access: str = "proxy"
    outcome: EgressOutcome
    reason: str = ""
    detail: str = ""
    rule: str = ""
    status: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    duration_s: float = 0.0
    decision: DecisionRecord | None = None
    agent_id: str = ""
    conn: int = 0


Terminal = (
    ExecutionExited | ExecutionOomKilled | ExecutionTimedOut | ExecutionKilled | ExecutionRefused | ExecutionFailed
)
TERMINAL_TYPES: tuple[type[_Ended], ...] = (
    ExecutionExited,
    ExecutionOomKilled,
    ExecutionTimedOut,
    ExecutionKilled,
    ExecutionRefused,
    ExecutionFailed,
)
#: Their type names (``execution.exited`` …).
TERMINAL_TAGS: frozenset[str] = frozenset(str(t.__struct_config__.tag) for t in TERMINAL_TYPES)
ExecutionEvent = (
    ExecutionStarted
    | ExecutionOutput
    | ExecutionExited
    | ExecutionOomKilled
    | ExecutionTimedOut
    | ExecutionKilled
    | ExecutionRefused
    | ExecutionFailed
    | ExecutionPaused
    | ExecutionResumed
    | ExecutionAction
    | ExecutionEgress
)


#: The event types that may carry a run's output: its chunks, and the terminal events of a run that started (their
#: ``tail``). A refused run never started, so it has none.
OUTPUT_EVENT_TYPES: tuple[str, ...] = (
    "execution.output",
    "execution.exited",
    "execution.oom_killed",
    "execution.timed_out",
    "execution.killed",
    "execution.failed",
)


def output_chunks(event: ExecutionEvent) -> tuple[OutputChunk, ...]:
    """The output an execution event carries, in stream order: an ``execution.output``'s chunk, a terminal
    event's ``tail``, nothing for the others. Readers reassemble a stream from these, in event order."""
    if isinstance(event, ExecutionOutput):
        return (OutputChunk(stream=event.stream, offset=event.offset, data=event.data),)
    if isinstance(event, TERMINAL_TYPES):
        return event.tail
    return ()


EXECUTION_CODEC: EventCodec[ExecutionEvent] = EventCodec(
    [
        ExecutionStarted,
        ExecutionOutput,
        ExecutionExited,
        ExecutionOomKilled,
        ExecutionTimedOut,
        ExecutionKilled,
        ExecutionRefused,
        ExecutionFailed,
        ExecutionPaused,
        ExecutionResumed,
        ExecutionAction,
        ExecutionEgress,
    ]
)


class HostRegistered(Event, frozen=True, kw_only=True, tag="host.registered"):
    host_id: str
    cpu_cores: float
    memory_mb: int
    tiers: tuple[str, ...]
    docker_version: str = ""
    runtimes: tuple[str, ...] = ()


class HostReconciled(Event, frozen=True, kw_only=True, tag="host.reconciled"):
    """What start-up cleaned up: containers removed, tasks reported failed, leftover runtime processes killed."""

    removed_containers: tuple[str, ...] = ()
    failed_tasks: tuple[str, ...] = ()
    killed_processes: tuple[int, ...] = ()


HostEvent = HostRegistered | HostReconciled
HOST_CODEC: EventCodec[HostEvent] = EventCodec([HostRegistered, HostReconciled])
