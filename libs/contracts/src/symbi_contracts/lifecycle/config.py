"""The agent configuration: the typed document an agent is registered with (owned by the lifecycle service).

Other services read it from the ``agent.*`` events: the scheduler (workload, resources, schedules,
network and filesystem grants for the tier choice), the policy service (the agent's own policies), the
context service (memory settings). Its rules (ranges, formats) are checked by the lifecycle service; the
bounds are here because the DSL compiler and the scheduler apply the same ones. Pure: no I/O.

Evolve only by adding fields with defaults (old events must still decode).
"""

from __future__ import annotations

import re

import msgspec
from symbi_common.bus_names import INBOX_DEPTH

from symbi_contracts.tools.declarations import McpServerSpec

#: An agent's version (semantic: major.minor.patch, with an optional pre-release or build suffix).
VERSION_RE = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}(?:[-+][0-9A-Za-z.-]{1,64})?\Z")
#: An agent's name, and each label of a host name: a DNS label.
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
#: A capability an agent declares.
CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}\Z")

#: The sandbox tier an agent asks for; ``auto`` lets risk assessment choose.
SECURITY_TIERS = ("tier1", "tier2", "auto")
FILESYSTEM_MODES = ("read", "read_write")

# Ranges are inclusive. They bound what one agent may ask for, not what a host has.
MEMORY_MB = (16, 65_536)  # symbi_dsl.compiler applies the same bounds
CPU_CORES = (0.1, 64.0)
DISK_IO_MBPS = (1, 10_000)
NETWORK_IO_MBPS = (0, 10_000)  # 0: no network at all
EXECUTION_TIMEOUT_S = (1.0, 86_400.0)  # 1 s .. 24 h

#: Memory stores an agent may ask for, and task priorities.
MEMORY_STORES = ("markdown", "vector", "kv")
PRIORITIES = ("low", "normal", "high", "critical")


class ResourceLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one agent may use (the resource manager enforces these)."""

    memory_mb: int = 512
    cpu_cores: float = 1.0
    disk_io_mbps: int = 100
    network_io_mbps: int = 10
    execution_timeout_s: float = 300.0


class PathAccess(msgspec.Struct, frozen=True, kw_only=True):
    """One filesystem path the agent may use, read-only or read-write."""

    path: str
    mode: str = "read"


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    """What runs in the sandbox for each task: an OCI image and its command (input on stdin, result on stdout)."""

    image: str
    command: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    workdir: str = "/"
    actions: bool = False
    """Whether the workload may ask the runtime to act for it while it runs (the action gateway): requests
    as ``@symbi {json}`` lines on stderr, replies on stdin, which then stays open (the input is only in the
    file ``$SYMBI_INPUT``). See docs/contracts/tasks.md, "Actions during a task"."""


class AgentQuota(msgspec.Struct, frozen=True, kw_only=True):
    """Quotas beyond one task (docs/policy.md, "Quotas"): 0 is unlimited. The scheduler gives the counts and these
    limits to Cedar with each ``task.allocate``; the baseline's ``quota-*`` policies deny a task over them."""

    concurrent_tasks: int = 0
    """Tasks of the agent running at once; over it, a task waits in the queue."""
    cpu_seconds_per_day: float = 0.0
    """CPU-seconds the agent's tasks may use per UTC day; over it, a task is refused (``quota_exceeded``)."""


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A recurring (or one-shot) task for this agent; the scheduler submits ``input`` at each cron firing."""

    name: str
    cron: str
    timezone: str = "UTC"
    one_shot: bool = False
    input: str = ""
    priority: str = "normal"


class PolicySpec(msgspec.Struct, frozen=True, kw_only=True):
    """One of the agent's own policies, compiled to Cedar; the policy service activates it with the agent."""

    name: str
    cedar: str
    source: str = ""
    """The definition's text it was compiled from (for people reading a decision)."""


class MemorySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The agent's long-term memory (a ``memory`` block of its definition); the context service reads it."""

    name: str
    store: str = "markdown"
    path: str = ""
    retention_s: float | None = None
    max_bytes: int | None = None
    embedding: str = ""
    vector_weight: float | None = None
    keyword_weight: float | None = None


class AgentBudget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the agent may spend on model calls per UTC day (docs/models.md). ``None``: no budget of the agent's
    own is set; then only its tenant's budget limits it, and a call no budget limits at all is refused by the
    baseline policy (fail closed). ``0`` allows nothing."""

    tokens_per_day: int | None = None
    #: Money, in micro-dollars (1 USD = 1 000 000).
    micro_usd_per_day: int | None = None


#: Bounds of a definition's ``messaging`` block (the bus between agents); the lifecycle service checks them.
BUS_MESSAGES_PER_S = (0.01, 100_000.0)
BUS_BYTES_PER_S = (1.0, 1024.0**3)
BUS_MESSAGE_BYTES = (1, 1024 * 1024)  # at most a protocol request line (agent_protocol.MAX_REQUEST_BYTES)
BUS_QUEUE_DEPTH = (1, INBOX_DEPTH)


class Messaging(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The agent on the bus between agents: how fast and how much it may send (a burst of one second's
    worth), the largest message body, how many messages its inbox holds, the topics it receives from its
    first run on, and the clearances policies see on it as a recipient. The defaults are the hosts' defaults; a host's own settings and a policy's
    ``@cap_resources`` on ``message.send`` can only lower them."""

    messages_per_s: float = 1000.0
    bytes_per_s: float = 8 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    queue_depth: int = INBOX_DEPTH
    subscriptions: tuple[str, ...] = ()
    clearances: tuple[str, ...] = ()
    """Classifications of data the agent may be sent (``resource.clearances`` of ``message.send``)."""


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The configuration an agent is registered with. Evolve only by adding fields with defaults."""

    name: str
    version: str = "0.1.0"
    description: str = ""
    capabilities: tuple[str, ...] = ()
    resources: ResourceLimits = msgspec.field(default_factory=ResourceLimits)
    security_tier: str = "auto"
    network_access: tuple[str, ...] = ()
    """Allow-list of hosts (``api.example.com``, ``*.example.com``, ``10.0.0.5``, optionally ``:port``)."""
    filesystem_access: tuple[PathAccess, ...] = ()
    external_apis: tuple[str, ...] = ()
    """Base URLs (https) of external APIs the agent calls."""
    workload: Workload | None = None
    """The container each task runs in; an agent without one can be registered but not given tasks."""
    schedules: tuple[ScheduleSpec, ...] = ()
    policies: tuple[PolicySpec, ...] = ()
    memory: MemorySettings | None = None
    messaging: Messaging = msgspec.field(default_factory=Messaging)
    """Limits and subscriptions on the bus between agents (docs/bus.md)."""
    tenant: str = "default"
    """The tenant the agent belongs to: quotas and budgets per tenant and day count all of its agents."""
    budget: AgentBudget = msgspec.field(default_factory=AgentBudget)
    """The agent's own model budget per day (default: none set; see :class:`AgentBudget`)."""
    quota: AgentQuota = msgspec.field(default_factory=AgentQuota)
    """The agent's quotas (the tenant's come from the scheduler's ``[scheduler.tenant_quotas]``)."""
    secrets: tuple[str, ...] = ()
    """Names of runtime secrets (``providers/openai/api_key``; ``vault://`` optional) each task gets as a file
    ``/symbi/secrets/<name>``, when policy allows (``secret.read``); ``vault://<name>`` as a ``workload.env``
    value does the same and sets the variable to the file's path (docs/secrets.md)."""
    mcp_servers: tuple[McpServerSpec, ...] = ()
    """MCP servers the agent uses, registered when a task of it starts like ``symbi tools add`` would (a
    conflicting registration of the same name refuses the task); their tools still need an operator's
    approval (docs/tools.md)."""


class ConfigIssue(msgspec.Struct, frozen=True):
    """One validation problem: ``field`` is a dotted path inside the config.

    Problems found in a DSL definition also say where: ``file``, ``line``, ``column``, the source line
    with a caret (``excerpt``) and a ``hint``; ``field`` is then the diagnostic's code (``syntax``,
    ``unknown_key``, ``range`` …).
    """

    field: str
    message: str
    file: str = ""
    line: int = 0
    column: int = 0
    excerpt: str = ""
    hint: str = ""
