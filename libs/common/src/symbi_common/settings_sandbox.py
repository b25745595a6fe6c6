"""The settings sections of the sandbox-agent daemon of a host: ``[sandbox]``, ``[egress]`` and ``[models]``."""

from __future__ import annotations

import re
import socket

import msgspec

from symbi_common.errors import ConfigError
from symbi_common.settings_sections import Section

#: A sandbox host id: one NATS subject token, short enough for the consumer names built from it.
HOST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def resolve_host_id(configured: str) -> str:
    """``[sandbox] host_id``, or the hostname made safe for NATS subjects and consumer names: the id this
    host's sandbox-agent daemon runs as (and whose host key, if it has one, it must be given)."""
    if configured:
        if not HOST_ID_RE.match(configured):
            raise ConfigError(
                f"{configured!r} is not a valid host id: use 1-64 letters, digits, '-' or '_'",
                setting="sandbox.host_id",
            )
        return configured
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


class DataRootSettings(Section):
    """One data root written as a table: ``logs = { path = "/var/log/app", classification = "internal" }``."""

    #: The host directory (absolute; it must exist when the daemon starts).
    path: str
    #: The Cedar ``Data`` entity's ``classification`` for everything under the root (empty: none).
    classification: str = ""


class SandboxSettings(Section):
    """The sandbox-agent daemon of this host (owned by the sandbox-agent's code)."""

    #: This host's id (letters, digits, ``-`` and ``_``); empty means the machine's hostname.
    host_id: str = ""
    #: The Docker engine; empty means the environment's (``DOCKER_HOST`` or ``/var/run/docker.sock``).
    docker_url: str = ""
    #: Output a task may print (stdout and stderr together) before its sandbox is killed.
    output_cap_bytes: int = 8 * 1024 * 1024
    #: Size of each sandbox's ``/tmp`` tmpfs (counts against its memory limit).
    scratch_mb: int = 16
    #: pids limit of every sandbox (Tier 2 never below 128: gVisor's own threads count against it).
    pids_limit: int = 256
    #: The non-root ``uid:gid`` workloads run as.
    user: str = "65534:65534"
    #: Where each task's input file is staged (mounted read-only into its sandbox); empty: a temp dir.
    work_dir: str = ""
    #: How often the host's entry in the ``HOSTS`` KV bucket is rewritten.
    heartbeat_interval_s: float = 1.0
    #: Host directories agents may be granted (docs/grants.md): ``name = "/host/path"`` or a table with
    #: ``path`` and ``classification``. A grant ``/symbi/data/<name>/…`` in an agent's definition is mounted
    #: there in its sandbox. ``SYMBI_SANDBOX__DATA_ROOTS__<NAME>=/host/path`` sets one from the environment.
    data_roots: dict[str, str | DataRootSettings] = msgspec.field(default_factory=dict)
    #: The SchemaPin trust bundle (JSON file) MCP tool signatures are verified against, offline; empty: none,
    #: so only tool servers registered without a SchemaPin domain can be approved.
    tools_trust_bundle: str = ""
    #: Seconds an MCP tool server has to answer a call, the largest result passed on (bytes), and the calls
    #: per second (with a burst of twice as many) each agent may make of each tool.
    tools_timeout_s: float = 30.0
    tools_max_result_bytes: int = 256 * 1024
    tools_rate_per_s: float = 10.0
    #: Messages per second each agent of this host may send on the bus (a burst of one second's worth).
    bus_messages_per_s: float = 1000.0
    #: Payload bytes per second each agent of this host may send on the bus.
    bus_bytes_per_s: float = 8 * 1024 * 1024
    #: Seconds a message handed to an agent waits for its acknowledgement before its inbox delivers it again
    #: (what a host that died between handing a batch over and recording it left un-acked): the ack wait of
    #: each inbox this host creates or declares. 1 to 3600 s (a batch is acked right after it is written).
    bus_ack_wait_s: float = 30.0


class EgressSettings(Section):
    """The egress proxy of this host's sandboxes (docs/network.md; owned by the sandbox-agent's code)."""

    #: Names the proxy answers itself instead of asking the system's resolver: ``name = "addr"`` or a list
    #: of addresses (for tests and air-gapped hosts).
    hosts: dict[str, str | list[str]] = msgspec.field(default_factory=dict)
    #: Whether names not in ``hosts`` are resolved by the system's resolver (false: they do not resolve).
    system_resolver: bool = True
    #: Networks (CIDR) the proxy may connect to although they are private, loopback, link-local … (and
    #: IP-literal targets in them, when the allow-list names the literal). Empty: public addresses only.
    allow_addresses: list[str] = msgspec.field(default_factory=list)
    #: Seconds an upstream has to accept a connection.
    connect_timeout_s: float = 10.0
    #: CA certificates (PEM file) the SDK's ``http.request`` trusts besides the system's (the daemon makes
    #: those TLS connections itself; a workload's own clients use the certificates of its image).
    ca_file: str = ""


class ModelPrice(Section):
    """What one model costs, in micro-dollars (1 USD = 1 000 000) per million input and output tokens."""

    input_micro_usd_per_mtok: int = 0
    output_micro_usd_per_mtok: int = 0


class ModelProviderSettings(Section):
    """One upstream speaking the OpenAI protocol (``[models.providers.<name>]``; docs/models.md)."""

    #: The provider's API root, with its version: ``https://api.openai.com/v1``.
    base_url: str
    #: The credential the gateway sends (``Authorization: Bearer``): a ``vault://`` secret name; empty: none.
    api_key: str = ""
    #: The models callable through this provider (Cedar resource ``Model::"<provider>/<model>"``).
    models: list[str] = msgspec.field(default_factory=list)
    #: Each model's price; a listed model without one is refused at start-up (its money cannot be counted).
    prices: dict[str, ModelPrice] = msgspec.field(default_factory=dict)
    #: A CA bundle (PEM) to trust for this provider instead of the system's; empty: the system's.
    ca_file: str = ""
    timeout_s: float = 120.0
    #: The parameter the gateway adds to hold a chat request that sets no limit to ``default_max_tokens``:
    #: ``max_tokens`` (what most OpenAI-compatible servers know) or ``max_completion_tokens`` (OpenAI's
    #: reasoning models refuse ``max_tokens``). Anything else is refused at start-up.
    completion_limit: str = "max_tokens"


class TenantBudgetSettings(Section):
    """A tenant's model budget per UTC day (``[models.tenants.<tenant>]``); unset: no tenant budget."""

    tokens_per_day: int | None = None
    micro_usd_per_day: int | None = None


class ModelsSettings(Section):
    """The model gateway of the sandbox-agent (docs/models.md)."""

    providers: dict[str, ModelProviderSettings] = msgspec.field(default_factory=dict)
    tenants: dict[str, TenantBudgetSettings] = msgspec.field(default_factory=dict)
    #: Keep-alive connections per provider.
    max_connections: int = 100
    #: The completion tokens reserved for a request that names no ``max_tokens``.
    default_max_tokens: int = 1024
    #: The largest request body (bytes) the gateway reads.
    max_request_bytes: int = 4 * 1024 * 1024


class McpSettings(Section):
    """The MCP client of the sandbox-agent (``[mcp]``, docs/tools.md): how it reaches the tool servers agents use."""

    #: Whether tool servers are started and their tools listed for agents at all. ``false`` (or
    #: ``MCP_SERVER_DISCOVERY=false``) switches the tool plane off: every tool listing and call is refused as
    #: ``tools_disabled``.
    discovery_enabled: bool = True
    #: How a tool definition is checked before an agent may call it. ``"strict"`` is the only mode: a SchemaPin
    #: signature by the server's domain (or an operator's approval), its hash pinned, re-checked when it changes.
    tool_verification: str = "strict"
    #: Seconds a tool server has to start (or accept the connection) and answer MCP's ``initialize``.
    connection_timeout_s: float = 30.0
    #: Tool server connections one sandbox-agent keeps open at once; a call needing another waits for one.
    max_concurrent_connections: int = 100
