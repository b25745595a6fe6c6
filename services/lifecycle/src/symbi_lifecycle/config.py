"""Agent configuration: the typed document an agent is registered with, and its validation.

Two kinds of problem are kept apart on purpose:

- A body that does not *decode* (malformed JSON, a wrong type, an unknown key) is refused outright with
  :class:`~symbi_common.errors.BadRequest`; its ``field`` detail names the offending path in the request.
- A body that decodes but breaks a rule (a range, a format, a cross-field constraint) is a valid
  registration of an invalid agent: the agent is registered and moves Initializing → Failed, and every
  problem is recorded as a :class:`ConfigIssue` whose ``field`` is the dotted path inside the config
  (``resources.memory_mb``, ``network_access[2]``). :func:`validate_config` returns *all* of them.

The types themselves are the lifecycle's contract (:mod:`symbi_contracts.lifecycle.config`); this module
holds the rules. Everything here is pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Iterator
from typing import Any

import msgspec
from symbi_common.bounds import check_no_nul
from symbi_common.errors import BadRequest, ValidationError
from symbi_common.secret_records import check_name
from symbi_common.secret_source import VAULT_SCHEME
from symbi_contracts.bus import valid_name
from symbi_contracts.grant_paths import grant_path_problem
from symbi_contracts.lifecycle.config import (
    BUS_BYTES_PER_S,
    BUS_MESSAGE_BYTES,
    BUS_MESSAGES_PER_S,
    BUS_QUEUE_DEPTH,
    CAPABILITY_RE,
    CPU_CORES,
    DISK_IO_MBPS,
    DNS_LABEL_RE,
    EXECUTION_TIMEOUT_S,
    FILESYSTEM_MODES,
    MEMORY_MB,
    MEMORY_STORES,
    NETWORK_IO_MBPS,
    PRIORITIES,
    SECURITY_TIERS,
    VERSION_RE,
    AgentConfig,
    ConfigIssue,
    MemorySettings,
    Messaging,
    PolicySpec,
    ScheduleSpec,
    Workload,
)
from symbi_contracts.scheduler.events import MAX_INPUT_BYTES
from symbi_contracts.tools.declarations import declaration_problems
from symbi_contracts.wire import decode_error_field, join_path

MAX_CAPABILITIES = 64
MAX_LIST = 256
MAX_DESCRIPTION = 2_000

#: ``name[:tag][@sha256:digest]`` with an optional registry/path prefix, as Docker accepts it.
_IMAGE_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
MAX_COMMAND_ARGS = 256
MAX_ENV = 128
MAX_SECRETS = 64
_API_RE = re.compile(r"^https://[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[^\s]*)?\Z")


# --- decoding --------------------------------------------------------------------------------------


def _unknown_keys(raw: Any, info: msgspec.inspect.Type, path: str) -> Iterator[str]:
    """Paths of keys in ``raw`` that its type ``info`` does not declare, at every depth of the type (structs inside
    structs, optionals, lists, tuples and dicts of them). Most config types accept unknown keys so that events
    written by a newer version still decode; a request must not, or a misspelt key (``quota.concurent_tasks``)
    is silently dropped and its default (no quota) takes its place."""
    match info:
        case msgspec.inspect.Metadata():
            yield from _unknown_keys(raw, info.type, path)
        case msgspec.inspect.StructType() if isinstance(raw, dict):
            fields = {f.encode_name: f.type for f in info.fields}
            for key, value in raw.items():
                if key in fields:
                    yield from _unknown_keys(value, fields[key], join_path(path, str(key)))
                else:
                    yield join_path(path, str(key))
        case msgspec.inspect.UnionType():
            for member in info.types:  # msgspec allows one struct or dict type per untagged union
                yield from _unknown_keys(raw, member, path)
        case (
            msgspec.inspect.ListType()
            | msgspec.inspect.VarTupleType()
            | msgspec.inspect.SetType()
            | msgspec.inspect.FrozenSetType()
        ) if isinstance(raw, list):
            for i, item in enumerate(raw):
                yield from _unknown_keys(item, info.item_type, f"{path}[{i}]")
        case msgspec.inspect.TupleType() if isinstance(raw, list):
            for i, (item, item_type) in enumerate(zip(raw, info.item_types, strict=False)):
                yield from _unknown_keys(item, item_type, f"{path}[{i}]")
        case msgspec.inspect.DictType() if isinstance(raw, dict):
            for key, value in raw.items():
                yield from _unknown_keys(value, info.value_type, join_path(path, str(key)))


_CONFIG_TYPE = msgspec.inspect.type_info(AgentConfig)


def convert_config(raw: Any, *, prefix: str = "config") -> AgentConfig:
    """Turn a decoded JSON object into an :class:`AgentConfig`; :class:`BadRequest` naming the field otherwise."""
    if not isinstance(raw, dict):
        raise BadRequest(f"{prefix}: expected an object, got {type(raw).__name__}", field=prefix)
    for where in _unknown_keys(raw, _CONFIG_TYPE, prefix):
        raise BadRequest(f"{where}: unknown field", field=where)
    try:
        return msgspec.convert(raw, AgentConfig)
    except msgspec.ValidationError as exc:
        field, message = decode_error_field(exc, prefix)
        raise BadRequest(f"{field}: {message}", field=field) from None


# --- validation ------------------------------------------------------------------------------------


def _in_range(issues: list[ConfigIssue], field: str, value: float, bounds: tuple[float, float], unit: str) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        issues.append(ConfigIssue(field, f"must be between {lo:g} and {hi:g} {unit}, got {value:g}"))


def _valid_host(entry: str) -> bool:
    host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65_535):
        return False
    host = host.lower()
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    if host.startswith("*."):
        host = host[2:]
    labels = host.split(".")
    return 0 < len(host) <= 253 and len(labels) >= 1 and all(DNS_LABEL_RE.match(label) for label in labels)


def _check_list(issues: list[ConfigIssue], field: str, values: tuple[Any, ...], limit: int = MAX_LIST) -> None:
    if len(values) > limit:
        issues.append(ConfigIssue(field, f"at most {limit} entries, got {len(values)}"))
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if v in seen:
            issues.append(ConfigIssue(f"{field}[{i}]", f"duplicate entry {v!r}"))
        seen.add(v)


NUL_MESSAGE = "must not contain a NUL character (PostgreSQL cannot store one)"


def _escape_nul(text: str) -> str:
    return text.replace("\x00", "\\0")


def nul_issue(value: Any, field: str = "") -> ConfigIssue | None:
    """The first NUL character anywhere in ``value`` (a config, or any struct, mapping or sequence) as an issue
    naming its path under ``field``; None if there is none.

    PostgreSQL's ``text`` and ``jsonb`` cannot store a NUL, so an event holding one would stop every read model
    that projects it. A request body is checked for NUL at the boundary, but a compiled definition is not that
    body: the DSL escape ``\\0`` becomes a NUL only when compiled, in any string (or map key) of the config.
    """
    try:
        check_no_nul(value, field)
    except BadRequest as err:
        # The path may quote a map key that holds the NUL: it is written as \0 so the issue itself can be stored.
        return ConfigIssue(_escape_nul(str(err.details.get("field") or field or "config")), NUL_MESSAGE)
    return None


def storable(issue: ConfigIssue) -> ConfigIssue:
    """``issue`` with every NUL character in its text written as ``\\0``: issues are stored in events and the read
    model, and a field path can quote a key that held a NUL (``workload.env.<key>``)."""
    texts = (issue.field, issue.message, issue.file, issue.excerpt, issue.hint)
    if not any("\x00" in text for text in texts):
        return issue
    field, message, file, excerpt, hint = map(_escape_nul, texts)
    return msgspec.structs.replace(issue, field=field, message=message, file=file, excerpt=excerpt, hint=hint)


def validate_config(config: AgentConfig, agent_id: str = "") -> list[ConfigIssue]:
    """Every rule the config breaks (empty if it is valid); each issue names its field. Its policies are checked
    as the set of agent ``agent_id`` (default: an agent named as the config is). A NUL character anywhere is one
    (see :func:`nul_issue`); the issues themselves never hold one (:func:`storable`)."""
    issues: list[ConfigIssue] = []
    nul = nul_issue(config)
    if nul is not None:
        issues.append(nul)
    if not DNS_LABEL_RE.match(config.name):
        issues.append(ConfigIssue("name", "must be 1-63 lowercase letters, digits or '-', not starting/ending in '-'"))
    if not VERSION_RE.match(config.version):
        issues.append(ConfigIssue("version", f"must be a semantic version like 1.2.3, got {config.version!r}"))
    if len(config.description) > MAX_DESCRIPTION:
        issues.append(ConfigIssue("description", f"at most {MAX_DESCRIPTION} characters"))

    _check_list(issues, "capabilities", config.capabilities, MAX_CAPABILITIES)
    for i, cap in enumerate(config.capabilities):
        if not CAPABILITY_RE.match(cap):
            issues.append(ConfigIssue(f"capabilities[{i}]", f"{cap!r} is not a capability name (e.g. 'web.fetch')"))

    r = config.resources
    _in_range(issues, "resources.memory_mb", r.memory_mb, MEMORY_MB, "MB")
    _in_range(issues, "resources.cpu_cores", r.cpu_cores, CPU_CORES, "cores")
    _in_range(issues, "resources.disk_io_mbps", r.disk_io_mbps, DISK_IO_MBPS, "MB/s")
    _in_range(issues, "resources.network_io_mbps", r.network_io_mbps, NETWORK_IO_MBPS, "MB/s")
    _in_range(issues, "resources.execution_timeout_s", r.execution_timeout_s, EXECUTION_TIMEOUT_S, "s")

    if config.security_tier not in SECURITY_TIERS:
        issues.append(ConfigIssue("security_tier", f"must be one of {', '.join(SECURITY_TIERS)}"))

    _check_list(issues, "network_access", config.network_access)
    for i, host in enumerate(config.network_access):
        if not _valid_host(host):
            issues.append(ConfigIssue(f"network_access[{i}]", f"{host!r} is not a host name, IP or *.domain"))
    if config.network_access and r.network_io_mbps == 0:
        issues.append(ConfigIssue("network_access", "hosts are listed but resources.network_io_mbps is 0"))

    _check_list(issues, "filesystem_access", tuple(p.path for p in config.filesystem_access))
    for i, access in enumerate(config.filesystem_access):
        problem = grant_path_problem(access.path)
        if problem is not None:
            issues.append(ConfigIssue(f"filesystem_access[{i}].path", problem))
        if access.mode not in FILESYSTEM_MODES:
            issues.append(ConfigIssue(f"filesystem_access[{i}].mode", f"must be one of {', '.join(FILESYSTEM_MODES)}"))

    _check_list(issues, "external_apis", config.external_apis)
    for i, url in enumerate(config.external_apis):
        if not _API_RE.match(url):
            issues.append(ConfigIssue(f"external_apis[{i}]", f"{url!r} is not an https:// URL"))
    if config.external_apis and r.network_io_mbps == 0:
        issues.append(ConfigIssue("external_apis", "external APIs are listed but resources.network_io_mbps is 0"))
    if config.quota.concurrent_tasks < 0:
        issues.append(ConfigIssue("quota.concurrent_tasks", "must be 0 (unlimited) or more"))
    if not 0 <= config.quota.cpu_seconds_per_day <= 86_400 * CPU_CORES[1]:
        issues.append(ConfigIssue("quota.cpu_seconds_per_day", "must be 0 (unlimited) or a number of CPU-seconds"))
    _check_list(issues, "secrets", config.secrets, MAX_SECRETS)
    for i, ref in enumerate(config.secrets):
        if not _secret_name_ok(ref):
            issues.append(ConfigIssue(f"secrets[{i}]", f"{ref!r} is not a secret name like providers/openai/api_key"))
    if config.workload is not None:
        _validate_workload(issues, config.workload)
    if config.memory is not None:
        _validate_memory(issues, config.memory)
    _validate_schedules(issues, config.schedules)
    _validate_policies(issues, config.policies, agent_id or config.name)
    for unit in ("tokens_per_day", "micro_usd_per_day"):
        value = getattr(config.budget, unit)
        if value is not None and not 0 <= value <= 10**15:
            issues.append(ConfigIssue(f"budget.{unit}", "must be between 0 and 10^15 (or left out: no budget)"))
    _validate_messaging(issues, config.messaging)
    issues += [ConfigIssue(f"mcp_servers{at}", msg) for at, msg in declaration_problems(config.mcp_servers)]
    return [storable(issue) for issue in issues]


def _validate_messaging(issues: list[ConfigIssue], m: Messaging) -> None:
    _in_range(issues, "messaging.messages_per_s", m.messages_per_s, BUS_MESSAGES_PER_S, "messages/s")
    _in_range(issues, "messaging.bytes_per_s", m.bytes_per_s, BUS_BYTES_PER_S, "bytes/s")
    _in_range(issues, "messaging.max_message_bytes", m.max_message_bytes, BUS_MESSAGE_BYTES, "bytes")
    _in_range(issues, "messaging.queue_depth", m.queue_depth, BUS_QUEUE_DEPTH, "messages")
    _check_list(issues, "messaging.subscriptions", m.subscriptions)
    for i, topic in enumerate(m.subscriptions):
        if not valid_name(topic):
            issues.append(
                ConfigIssue(f"messaging.subscriptions[{i}]", f"{topic!r} is not a topic (1-64 of A-Z a-z 0-9 - _)")
            )


def _validate_memory(issues: list[ConfigIssue], m: MemorySettings) -> None:
    if m.store not in MEMORY_STORES:
        issues.append(ConfigIssue("memory.store", f"must be one of {', '.join(MEMORY_STORES)}"))
    for name, weight in (("vector_weight", m.vector_weight), ("keyword_weight", m.keyword_weight)):
        if weight is not None and not 0.0 <= weight <= 1.0:
            issues.append(ConfigIssue(f"memory.{name}", f"must be between 0 and 1, got {weight:g}"))
    if m.retention_s is not None and m.retention_s <= 0:
        issues.append(ConfigIssue("memory.retention_s", "must be positive"))


def _validate_schedules(issues: list[ConfigIssue], schedules: tuple[ScheduleSpec, ...]) -> None:
    from croniter import croniter  # type: ignore[import-untyped]

    _check_list(issues, "schedules", tuple(s.name for s in schedules))
    for i, spec in enumerate(schedules):
        try:
            valid = len(spec.cron.split()) in (5, 6) and bool(croniter.is_valid(spec.cron))
        except Exception:  # croniter raises assorted errors for garbage
            valid = False
        if not valid:
            issues.append(ConfigIssue(f"schedules[{i}].cron", f"{spec.cron!r} is not a cron expression"))
        try:
            zoneinfo.ZoneInfo(spec.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            issues.append(ConfigIssue(f"schedules[{i}].timezone", f"{spec.timezone!r} is not a time zone"))
        if spec.priority not in PRIORITIES:
            issues.append(ConfigIssue(f"schedules[{i}].priority", f"must be one of {', '.join(PRIORITIES)}"))
        if len(spec.input.encode()) > MAX_INPUT_BYTES:  # each firing's task would be refused for it
            issues.append(ConfigIssue(f"schedules[{i}].input", f"at most {MAX_INPUT_BYTES} bytes (a task's input)"))


def _validate_policies(issues: list[ConfigIssue], policies: tuple[PolicySpec, ...], agent_id: str) -> None:
    """Each policy parses, and together they make the set the policy service accepts for ``agent_id``
    (scoped to the agent, no secret grant, valid against the schema): an agent whose own policies would be
    refused there must not become Ready without them."""
    import cedarpy
    from symbi_common.policy.agent_sets import check_agent_policies
    from symbi_common.policy.cedar import PolicyRejected, check_shape

    _check_list(issues, "policies", tuple(p.name for p in policies))
    parsed = True
    for i, policy in enumerate(policies):
        try:
            check_shape(policy.cedar)  # first: text nested too deeply would crash cedarpy's parser
            cedarpy.policies_to_json_str(policy.cedar)
        except PolicyRejected as err:
            issues.append(ConfigIssue(f"policies[{i}].cedar", f"is not acceptable Cedar: {err.message}"))
            parsed = False
        except ValueError as err:
            issues.append(ConfigIssue(f"policies[{i}].cedar", f"is not valid Cedar: {err}"))
            parsed = False
    if policies and parsed:
        try:
            check_agent_policies(agent_id, policies)
        except (PolicyRejected, ValidationError) as err:
            issues.append(ConfigIssue("policies", f"would be refused by the policy service: {err.message}"))


def _secret_name_ok(ref: str) -> bool:
    try:
        check_name(ref)
    except ValidationError:
        return False
    return True


def _validate_workload(issues: list[ConfigIssue], w: Workload) -> None:
    if not _IMAGE_RE.match(w.image) or len(w.image) > 255:
        issues.append(ConfigIssue("workload.image", f"{w.image!r} is not an image reference like 'symbi/busybox:1'"))
    if len(w.command) > MAX_COMMAND_ARGS:
        issues.append(ConfigIssue("workload.command", f"at most {MAX_COMMAND_ARGS} arguments, got {len(w.command)}"))
    for i, arg in enumerate(w.command):
        if "\x00" in arg or len(arg) > 4096:
            issues.append(ConfigIssue(f"workload.command[{i}]", "must be at most 4096 characters without NUL"))
    if len(w.env) > MAX_ENV:
        issues.append(ConfigIssue("workload.env", f"at most {MAX_ENV} variables, got {len(w.env)}"))
    for key, value in w.env.items():
        if not _ENV_RE.match(key):
            issues.append(ConfigIssue(f"workload.env.{key}", "is not an environment variable name"))
        elif "\x00" in value or len(value) > 4096:
            issues.append(ConfigIssue(f"workload.env.{key}", "must be at most 4096 characters without NUL"))
        elif value.startswith(VAULT_SCHEME) and not _secret_name_ok(value):
            issues.append(ConfigIssue(f"workload.env.{key}", f"{value!r} is not a secret reference (docs/secrets.md)"))
    if not w.workdir.startswith("/") or "/../" in f"{w.workdir}/" or "\x00" in w.workdir:
        issues.append(ConfigIssue("workload.workdir", "must be an absolute path without '..'"))
