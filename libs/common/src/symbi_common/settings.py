"""Settings: one typed object per service, from a TOML file plus ``SYMBI_*`` environment variables.

Precedence: defaults < TOML file (``SYMBI_CONFIG_PATH`` or ``--config``) < environment. Any section
key can be set as ``SYMBI_<SECTION>__<KEY>`` (e.g. ``SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS=50``); the
documented short names (``SYMBI_LOG_LEVEL``, ``SYMBI_NATS_URL``, ``SYMBIONT_VECTOR_BACKEND`` …)
map onto their keys. A bad or unknown setting fails start-up with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from symbi_common.errors import ConfigError
from symbi_common.settings_checks import check_settings, refuse_unsupported
from symbi_common.settings_checks import parse_size as parse_size


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class RuntimeSettings(_Section):
    #: Tasks (each one agent's) the scheduler lets run at once in the whole runtime; more wait in the queue.
    max_concurrent_agents: int = 10_000
    #: ``production`` refuses ``policy.enforcement = "allow-all"``.
    mode: Literal["development", "production"] = "development"
    #: The image a DSL agent's body runs in (``deploy/host/agent-image.sh``'s tag: Python, the SDK, the body
    #: runner); the lifecycle gives it to agents with a body, and ``symbi up`` builds it when it is missing.
    agent_image: str = "symbi/agent-python:1"


class SecuritySettings(_Section):
    default_sandbox_tier: Literal["docker", "gvisor"] = "gvisor"
    #: Only ``true``: the runtime never runs without policy (``policy.enforcement`` chooses how it decides).
    enforce_policies: bool = True
    #: Only ``true``: every event is signed into the audited stream.
    audit_enabled: bool = True
    #: Ed25519 signatures come from libsodium (PyNaCl); the only provider there is.
    crypto_provider: Literal["ring", "libsodium", "openssl"] = "libsodium"
    #: Only ``jetstream``: the audit trail is the signed, hash-chained event stream.
    audit_storage: str = "jetstream"


class QdrantSettings(_Section):
    host: str = "localhost"
    port: int = 6333


class ContextSettings(_Section):
    #: ``embedded`` (Qdrant Edge) and ``lancedb`` keep the index under ``vector_data_path``; ``qdrant``: a server.
    vector_backend: Literal["embedded", "lancedb", "qdrant"] = "embedded"
    vector_data_path: str = "./data/vectors"
    #: The ``openai`` provider's dimension; the ``local`` model has 384 (any other value is refused).
    embedding_dimension: int = 1536
    #: Memory for recently computed embeddings (``"512MB"``, ``"1GB"``, bytes; ``"0"``: none). Holds no text.
    context_cache_size: str = "1GB"
    knowledge_retention_days: int = 365
    qdrant: QdrantSettings = msgspec.field(default_factory=QdrantSettings)
    #: ``local``: the offline MiniLM model (384 dimensions); ``openai``: an OpenAI-compatible endpoint
    #: (``OPENAI_API_KEY``) with ``embedding_model`` and ``embedding_dimension``.
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str = "text-embedding-3-small"
    openai_base_url: str = "https://api.openai.com/v1"
    #: Chat model for RAG answers; answers are generated only when set and ``OPENAI_API_KEY`` is present.
    chat_model: str = ""
    #: Compressed vectors in the index (``int8``: 4x smaller, ``binary``: 2 bits a dimension, 16x smaller), rescored
    #: with the originals.
    vector_quantization: Literal["none", "int8", "binary"] = "none"
    short_term_capacity: int = 200
    short_term_ttl_s: float = 86_400.0
    chunk_chars: int = 1_000
    chunk_overlap_chars: int = 150
    #: How often expired short-term memories and knowledge past its retention are forgotten.
    sweep_interval_s: float = 60.0


class NatsSettings(_Section):
    url: str = "nats://127.0.0.1:4222"
    replicas: int = 1
    events_max_bytes: int = 10 * 1024**3
    duplicate_window_s: float = 300.0
    request_timeout_s: float = 5.0
    #: TLS to the NATS server (between hosts): the CA that signed the server's certificate; setting
    #: it switches TLS on. ``tls_cert``/``tls_key``: this client's certificate for mutual TLS.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


class DatabaseSettings(_Section):
    url: str = ""
    pool_min: int = 1
    pool_max: int = 10


class KeysSettings(_Section):
    #: This service's own key directory (``<keyring>/<service>``); a whole keyring (tests, tools)
    #: also works: then ``<dir>/<service>/`` is used.
    dir: str = ".symbi/keys"
    #: This service's private Ed25519 signing key; default ``<service dir>/signing.key``.
    signing_key_path: str = ""
    #: This service's private X25519 wrap key (opens the data keys sealed to it); default ``<service dir>/wrap.key``.
    wrap_key_path: str = ""
    root_public_key_path: str = ""


class ServiceSettings(_Section):
    http_host: str = "127.0.0.1"
    http_port: int = 8080


class EventSettings(_Section):
    snapshot_every: int = 100
    max_event_bytes: int = 1024 * 1024 - 4096
    max_command_bytes: int = 256 * 1024


class TelemetrySettings(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    otlp_endpoint: str = ""


class PolicySettings(_Section):
    """How services get policy decisions (owned by the policy service's code)."""

    #: ``embedded``: in-process decision point following the policy events; ``remote``: ask
    #: ``cmd.policy.decide``; ``allow-all``: enforcement explicitly off (every record says so).
    enforcement: Literal["embedded", "remote", "allow-all"] = "embedded"
    #: How long a starting service waits for its embedded decision point to read the policy events.
    startup_timeout_s: float = 10.0
    #: Send every enforcement-point decision to the decision log (``cmd.policy.log_decisions``).
    decision_log: bool = True
    #: Decisions per decision-log batch, and the longest a decision waits in the queue before it is sent.
    log_batch_size: int = 200
    log_interval_s: float = 0.2
    #: Queued decisions before enforcement waits for the log to catch up (nothing is ever dropped).
    log_max_pending: int = 50_000
    #: The policy set the policy service registers as ``baseline`` when no policy set exists yet;
    #: empty: ``examples/policies/baseline.cedar`` of the working directory or of the source checkout.
    baseline_path: str = ""
    #: Decisions the what-if analysis replays at most (the most recent ones of the decision log).
    what_if_limit: int = 10_000


class TenantQuotaSettings(_Section):
    """One tenant's quotas (``[scheduler.tenant_quotas.<tenant>]``); 0 is unlimited (docs/policy.md, "Quotas")."""

    concurrent_tasks: int = 0
    cpu_seconds_per_day: float = 0.0


class SchedulerSettings(_Section):
    """Task placement (owned by the scheduler's code)."""

    strategy: Literal["first_fit", "best_fit", "priority"] = "best_fit"
    #: ``priority`` strategy: the fraction of each host only critical tasks may use.
    reserved_headroom: float = 0.2
    #: A critical task that fits nowhere evicts (``requeue``) or pauses (``suspend``) the lowest-priority task.
    preemption: Literal["requeue", "suspend"] = "requeue"
    #: A queued task rises one priority level per this many seconds of waiting (up to ``high``).
    aging_interval_s: float = 30.0
    #: A host whose heartbeat is older than this is lost; its tasks are re-queued (or fail after max_attempts).
    host_lost_after_s: float = 5.0
    max_attempts: int = 3
    #: Only the holder of the lease (KV bucket ``SCHEDULER``) schedules; it expires this long after the last renewal.
    lease_ttl_s: float = 5.0
    #: How often the leader re-checks hosts, aging and schedules when no event wakes it.
    tick_s: float = 0.5
    #: This replica's name in the lease; empty means ``<hostname>-<pid>``.
    replica_id: str = ""
    #: Quotas per tenant (an agent's ``tenant``); a tenant not listed has none.
    tenant_quotas: dict[str, TenantQuotaSettings] = msgspec.field(default_factory=dict)


class DataRootSettings(_Section):
    """One data root written as a table: ``logs = { path = "/var/log/app", classification = "internal" }``."""

    #: The host directory (absolute; it must exist when the daemon starts).
    path: str
    #: The Cedar ``Data`` entity's ``classification`` for everything under the root (empty: none).
    classification: str = ""


class SandboxSettings(_Section):
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


class EgressSettings(_Section):
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


class WitnessSettings(_Section):
    """One C2SP tlog-witness the audit service asks to cosign its checkpoints."""

    #: The witness's submission prefix (``<url>/add-checkpoint``).
    url: str
    #: Its verifier key ``<name>+<hex key id>+<base64(0x04 ‖ Ed25519 key)>`` (``symbi witness init`` prints it).
    key: str


class AuditSettings(_Section):
    """The audit verifier and checkpoints (owned by the audit service's code)."""

    checkpoint_every: int = 1_000
    checkpoint_interval_s: float = 10.0
    #: The log's name in signed checkpoints (C2SP tlog-checkpoint origin line).
    origin: str = "symbi-audit"
    #: Events verified per batch (one PostgreSQL transaction each).
    batch: int = 512
    #: Threads verifying signatures; 0 = one per core.
    verify_threads: int = 0
    #: NATS subject prefix of the live feed: ``<prefix>.<aggregate type>.<id>.<event type>``.
    live_subject: str = "audit.live"
    #: Witnesses asked to cosign each checkpoint before it is published (``[[audit.witnesses]]``).
    witnesses: list[WitnessSettings] = msgspec.field(default_factory=list)
    #: Cosignatures a checkpoint needs before it is published (at most the number of witnesses).
    min_witnesses: int = 0
    #: Seconds between checks that the ``EVENTS`` stream still holds what the last signed checkpoint covers.
    guard_interval_s: float = 10.0


class ModelPrice(_Section):
    """What one model costs, in micro-dollars (1 USD = 1 000 000) per million input and output tokens."""

    input_micro_usd_per_mtok: int = 0
    output_micro_usd_per_mtok: int = 0


class ModelProviderSettings(_Section):
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


class TenantBudgetSettings(_Section):
    """A tenant's model budget per UTC day (``[models.tenants.<tenant>]``); unset: no tenant budget."""

    tokens_per_day: int | None = None
    micro_usd_per_day: int | None = None


class ModelsSettings(_Section):
    """The model gateway of the sandbox-agent (docs/models.md)."""

    providers: dict[str, ModelProviderSettings] = msgspec.field(default_factory=dict)
    tenants: dict[str, TenantBudgetSettings] = msgspec.field(default_factory=dict)
    #: Keep-alive connections per provider.
    max_connections: int = 100
    #: The completion tokens reserved for a request that names no ``max_tokens``.
    default_max_tokens: int = 1024
    #: The largest request body (bytes) the gateway reads.
    max_request_bytes: int = 4 * 1024 * 1024


class Settings(_Section):
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    context: ContextSettings = msgspec.field(default_factory=ContextSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    keys: KeysSettings = msgspec.field(default_factory=KeysSettings)
    service: ServiceSettings = msgspec.field(default_factory=ServiceSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings)
    egress: EgressSettings = msgspec.field(default_factory=EgressSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    models: ModelsSettings = msgspec.field(default_factory=ModelsSettings)

    def service_keys_dir(self, service: str) -> Path:
        """The service's own key directory: ``keys.dir``, or ``keys.dir/<service>`` if that is a keyring."""
        base = Path(self.keys.dir)
        own = base / service
        if not (base / "signing.key").exists() and (own / "signing.key").exists():
            return own
        return base

    def signing_key_path(self, service: str) -> Path:
        return Path(self.keys.signing_key_path or self.service_keys_dir(service) / "signing.key")

    def wrap_key_path(self, service: str) -> Path:
        return Path(self.keys.wrap_key_path or self.service_keys_dir(service) / "wrap.key")

    def root_public_key_path(self, service: str | None = None) -> Path:
        base = self.service_keys_dir(service) if service else Path(self.keys.dir)
        return Path(self.keys.root_public_key_path or base / "root.pub")


#: Documented environment variables and the setting each one sets.
ENV_ALIASES: Mapping[str, str] = {
    "SYMBI_LOG_LEVEL": "telemetry.log_level",
    "SYMBI_LOG_FORMAT": "telemetry.log_format",
    "SYMBI_RUNTIME_MODE": "runtime.mode",
    "SYMBI_CRYPTO_PROVIDER": "security.crypto_provider",
    "SYMBI_AUDIT_STORAGE": "security.audit_storage",
    "SYMBI_NATS_URL": "nats.url",
    "SYMBI_NATS_TLS_CA": "nats.tls_ca",
    "SYMBI_NATS_TLS_CERT": "nats.tls_cert",
    "SYMBI_NATS_TLS_KEY": "nats.tls_key",
    "SYMBI_DATABASE_URL": "database.url",
    "SYMBI_KEYS_DIR": "keys.dir",
    "SYMBI_SIGNING_KEY_PATH": "keys.signing_key_path",
    "SYMBI_WRAP_KEY_PATH": "keys.wrap_key_path",
    "SYMBI_ROOT_PUBLIC_KEY_PATH": "keys.root_public_key_path",
    "SYMBI_HTTP_HOST": "service.http_host",
    "SYMBI_HTTP_PORT": "service.http_port",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "telemetry.otlp_endpoint",
    "SYMBIONT_VECTOR_BACKEND": "context.vector_backend",
    "SYMBIONT_VECTOR_HOST": "context.qdrant.host",
    "SYMBIONT_VECTOR_PORT": "context.qdrant.port",
    "SYMBIONT_VECTOR_DATA_PATH": "context.vector_data_path",
    "MCP_SERVER_DISCOVERY": "mcp.discovery_enabled",  # refused: see UNSUPPORTED
}

_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]+)`")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError("is not a section", setting=p)
        node = child
    node[leaf] = value


def _refuse_env(env: Mapping[str, str]) -> None:
    for name in env:
        if name.startswith("SYMBIONT_VECTOR_") and name not in ENV_ALIASES:
            known = ", ".join(sorted(n for n in ENV_ALIASES if n.startswith("SYMBIONT_")))
            raise ConfigError(f"unknown variable; the SYMBIONT_VECTOR_* variables are {known}", setting=name)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, dotted in ENV_ALIASES.items():
        if name in env and env[name] != "":
            _set(tree, dotted, env[name])
    for name, value in env.items():
        if name.startswith("SYMBI_") and "__" in name:
            dotted = name[len("SYMBI_") :].lower().replace("__", ".")
            _set(tree, dotted, value)
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings; raises :class:`ConfigError` naming the first bad setting."""
    env = os.environ if env is None else env
    file = path or env.get("SYMBI_CONFIG_PATH") or None
    tree: dict[str, Any] = {}
    if file:
        try:
            tree = tomllib.loads(Path(file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist", setting="SYMBI_CONFIG_PATH") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}", setting="SYMBI_CONFIG_PATH") from None
    tree = _merge(tree, _env_overrides(env))
    _refuse_env(env)
    refuse_unsupported(tree)
    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _PATH_RE.search(msg)
        where = m.group(1) if m else ""
        u = _UNKNOWN_RE.search(msg)
        if u:
            where = f"{where}.{u.group(1)}" if where else u.group(1)
            raise ConfigError("unknown setting", setting=where) from None
        raise ConfigError(msg.split(" - at ")[0], setting=where or "(root)") from None
    check_settings(settings, tree)
    return settings
