"""The settings sections every service reads: runtime, security, context, NATS, database, keys, HTTP, events,
telemetry, policy, scheduler and audit (``[<section>]`` in the TOML file; :mod:`symbi_common.settings` loads them).

The sandbox-agent's own sections (sandbox, egress, models) are in :mod:`symbi_common.settings_sandbox`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A settings section: keyword-only, and a key it does not know is an error (it names the key)."""


class RuntimeSettings(Section):
    #: Tasks (each one agent's) the scheduler lets run at once in the whole runtime; more wait in the queue.
    max_concurrent_agents: int = 10_000
    #: ``production`` refuses ``policy.enforcement = "allow-all"``.
    mode: Literal["development", "production"] = "development"
    #: The image a DSL agent's body runs in (``deploy/host/agent-image.sh``'s tag: Python, the SDK, the body
    #: runner); the lifecycle gives it to agents with a body, and ``symbi up`` builds it when it is missing.
    agent_image: str = "symbi/agent-python:1"


class SecuritySettings(Section):
    default_sandbox_tier: Literal["docker", "gvisor"] = "gvisor"
    #: Only ``true``: the runtime never runs without policy (``policy.enforcement`` chooses how it decides).
    enforce_policies: bool = True
    #: Only ``true``: every event is signed into the audited stream.
    audit_enabled: bool = True
    #: Ed25519 signatures come from libsodium (PyNaCl); the only provider there is.
    crypto_provider: Literal["ring", "libsodium", "openssl"] = "libsodium"
    #: Only ``jetstream``: the audit trail is the signed, hash-chained event stream.
    audit_storage: str = "jetstream"


class QdrantSettings(Section):
    host: str = "localhost"
    port: int = 6333


class ContextSettings(Section):
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


class NatsSettings(Section):
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


class DatabaseSettings(Section):
    url: str = ""
    pool_min: int = 1
    pool_max: int = 10


class KeysSettings(Section):
    #: This service's own key directory (``<keyring>/<service>``); a whole keyring (tests, tools)
    #: also works: then ``<dir>/<service>/`` is used.
    dir: str = ".symbi/keys"
    #: This service's private Ed25519 signing key; default ``<service dir>/signing.key``.
    signing_key_path: str = ""
    #: This service's private X25519 wrap key (opens the data keys sealed to it); default ``<service dir>/wrap.key``.
    wrap_key_path: str = ""
    root_public_key_path: str = ""


class ServiceSettings(Section):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Serve the HTTP API over HTTPS with this certificate (PEM, with its chain) and its private key: both or
    #: neither (``symbi_common.service_app.https_options`` refuses one without the other, or files it cannot load).
    tls_cert: str = ""
    tls_key: str = ""


class EventSettings(Section):
    snapshot_every: int = 100
    max_event_bytes: int = 1024 * 1024 - 4096
    max_command_bytes: int = 256 * 1024


class TelemetrySettings(Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    otlp_endpoint: str = ""


class PolicySettings(Section):
    """How services get policy decisions (owned by the policy service's code)."""

    #: ``embedded``: in-process decision point following the policy events; ``remote``: ask
    #: ``cmd.policy.decide``; ``allow-all``: enforcement explicitly off (every record says so).
    enforcement: Literal["embedded", "remote", "allow-all"] = "embedded"
    #: How long a starting service waits for its embedded decision point to read the policy events.
    startup_timeout_s: float = 10.0
    #: Send every enforcement-point decision to the decision log (``dlog.<service>``, stream ``DECISIONS``).
    decision_log: bool = True
    #: Decisions per decision-log batch, and the longest a decision waits in the queue before it is sent.
    log_batch_size: int = 200
    log_interval_s: float = 0.2
    #: Queued decisions before enforcement waits for the log to catch up (nothing is ever dropped).
    log_max_pending: int = 50_000
    #: Where each process keeps its decisions until the log has stored them, so a process that dies loses none
    #: (the next one of the same service sends them). Empty: a directory per deployment (its NATS URL and keys)
    #: under the system's temporary directory, which outlives the process but not the machine or container.
    log_spool_dir: str = ""
    #: The policy set the policy service registers as ``baseline`` when no policy set exists yet;
    #: empty: ``examples/policies/baseline.cedar`` of the working directory or of the source checkout.
    baseline_path: str = ""
    #: Decisions the what-if analysis replays at most (the most recent ones of the decision log): 1 to 2,000
    #: (each is decided twice, off the event loop, one what-if at a time).
    what_if_limit: Annotated[int, msgspec.Meta(ge=1, le=2_000)] = 2_000


class TenantQuotaSettings(Section):
    """One tenant's quotas (``[scheduler.tenant_quotas.<tenant>]``); 0 is unlimited (docs/policy.md, "Quotas")."""

    concurrent_tasks: int = 0
    cpu_seconds_per_day: float = 0.0


class SchedulerSettings(Section):
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


class WitnessSettings(Section):
    """One C2SP tlog-witness the audit service asks to cosign its checkpoints."""

    #: The witness's submission prefix (``<url>/add-checkpoint``).
    url: str
    #: Its verifier key ``<name>+<hex key id>+<base64(0x04 ‖ Ed25519 key)>`` (``symbi witness init`` prints it).
    key: str


class AuditSettings(Section):
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
    #: Seconds after which the guard rebuilds the tree from the stream's first event again instead of extending
    #: what it rebuilt (it also does on start and whenever the stream was re-created, purged or lost a message).
    guard_full_interval_s: float = 3600.0
