"""Agent configuration: the typed document an agent is registered with, and its validation.

Two kinds of problem are kept apart on purpose:

- A body that does not *decode* (malformed JSON, a wrong type, an unknown key) is refused outright with
  :class:`~symbi_common.errors.BadRequest`; its ``field`` detail names the offending path in the request.
- A body that decodes but breaks a rule (a range, a format, a cross-field constraint) is a valid
  registration of an invalid agent: the agent is registered and moves Initializing → Failed, and every
  problem is recorded as a :class:`ConfigIssue` whose ``field`` is the dotted path inside the config
  (``resources.memory_mb``, ``network_access[2]``). :func:`validate_config` returns *all* of them.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Iterator
from typing import Any, TypeVar

import msgspec
from symbi_common.bounds import check_ints
from symbi_common.errors import BadRequest

T = TypeVar("T")

#: The sandbox tier an agent asks for; ``auto`` lets risk assessment choose.
SECURITY_TIERS = ("tier1", "tier2", "auto")
FILESYSTEM_MODES = ("read", "read_write")

# Ranges are inclusive. They bound what one agent may ask for, not what a host has.
MEMORY_MB = (16, 65_536)  # symbi_dsl.compiler keeps the same bounds
CPU_CORES = (0.1, 64.0)
DISK_IO_MBPS = (1, 10_000)
NETWORK_IO_MBPS = (0, 10_000)  # 0: no network at all
EXECUTION_TIMEOUT_S = (1.0, 86_400.0)  # 1 s .. 24 h

MAX_CAPABILITIES = 64
MAX_LIST = 256
MAX_DESCRIPTION = 2_000

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label
_VERSION_RE = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}(?:[-+][0-9A-Za-z.-]{1,64})?$")
_CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
_HOST_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: ``name[:tag][@sha256:digest]`` with an optional registry/path prefix, as Docker accepts it.
_IMAGE_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_COMMAND_ARGS = 256
MAX_ENV = 128
_API_RE = re.compile(r"^https://[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[^\s]*)?$")


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


_CONFIG_KEYS = frozenset(AgentConfig.__struct_fields__)
_LIMIT_KEYS = frozenset(ResourceLimits.__struct_fields__)
_PATH_KEYS = frozenset(PathAccess.__struct_fields__)
_WORKLOAD_KEYS = frozenset(Workload.__struct_fields__)


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


# --- decoding --------------------------------------------------------------------------------------

_AT_RE = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD_RE = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _unknown_keys(raw: dict[str, Any], prefix: str) -> Iterator[str]:
    """Paths of keys in a config object that the config types do not declare."""
    for key in raw:
        if key not in _CONFIG_KEYS:
            yield _join(prefix, str(key))
    limits = raw.get("resources")
    if isinstance(limits, dict):
        for key in limits:
            if key not in _LIMIT_KEYS:
                yield _join(prefix, f"resources.{key}")
    workload = raw.get("workload")
    if isinstance(workload, dict):
        for key in workload:
            if key not in _WORKLOAD_KEYS:
                yield _join(prefix, f"workload.{key}")
    paths = raw.get("filesystem_access")
    for i, entry in enumerate(paths if isinstance(paths, list) else ()):
        for key in entry if isinstance(entry, dict) else ():
            if key not in _PATH_KEYS:
                yield _join(prefix, f"filesystem_access[{i}].{key}")


def decode_error_field(exc: msgspec.ValidationError, prefix: str = "") -> tuple[str, str]:
    """The dotted path and the message of a msgspec validation error, e.g. ``("resources.memory_mb", …)``."""
    text = str(exc)
    m = _AT_RE.search(text)
    path = m.group(1) if m else ""
    message = text[: m.start()] if m else text
    named = _FIELD_RE.search(message)
    if named:
        path = _join(path, named.group(1))
    return _join(prefix, path) if path else (prefix or "(body)"), message


def convert_config(raw: Any, *, prefix: str = "config") -> AgentConfig:
    """Turn a decoded JSON object into an :class:`AgentConfig`; :class:`BadRequest` naming the field otherwise."""
    if not isinstance(raw, dict):
        raise BadRequest(f"{prefix}: expected an object, got {type(raw).__name__}", field=prefix)
    for where in _unknown_keys(raw, prefix):
        raise BadRequest(f"{where}: unknown field", field=where)
    try:
        return msgspec.convert(raw, AgentConfig)
    except msgspec.ValidationError as exc:
        field, message = decode_error_field(exc, prefix)
        raise BadRequest(f"{field}: {message}", field=field) from None


def decode_json(data: bytes, type_: type[T]) -> T:
    """Decode a request body; malformed JSON or a wrong type is a :class:`BadRequest` naming the field."""
    try:
        body = msgspec.json.decode(data or b"{}", type=type_)
    except msgspec.ValidationError as exc:
        field, message = decode_error_field(exc)
        raise BadRequest(f"{field}: {message}", field=field) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", field="(body)") from None
    check_ints(body)
    return body


# --- validation ------------------------------------------------------------------------------------


def _in_range(issues: list[ConfigIssue], field: str, value: float, bounds: tuple[float, float], unit: str) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        issues.append(ConfigIssue(field, f"must be between {lo:g} and {hi:g} {unit}, got {value:g}"))


def _valid_host(entry: str) -> bool:
    host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if port and not (port.isdigit() and 1 <= int(port) <= 65_535):
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
    return 0 < len(host) <= 253 and len(labels) >= 1 and all(_HOST_LABEL_RE.match(label) for label in labels)


def _check_list(issues: list[ConfigIssue], field: str, values: tuple[Any, ...], limit: int = MAX_LIST) -> None:
    if len(values) > limit:
        issues.append(ConfigIssue(field, f"at most {limit} entries, got {len(values)}"))
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if v in seen:
            issues.append(ConfigIssue(f"{field}[{i}]", f"duplicate entry {v!r}"))
        seen.add(v)


def validate_config(config: AgentConfig) -> list[ConfigIssue]:
    """Every rule the config breaks (empty if it is valid); each issue names its field."""
    issues: list[ConfigIssue] = []
    if not _NAME_RE.match(config.name):
        issues.append(ConfigIssue("name", "must be 1-63 lowercase letters, digits or '-', not starting/ending in '-'"))
    if not _VERSION_RE.match(config.version):
        issues.append(ConfigIssue("version", f"must be a semantic version like 1.2.3, got {config.version!r}"))
    if len(config.description) > MAX_DESCRIPTION:
        issues.append(ConfigIssue("description", f"at most {MAX_DESCRIPTION} characters"))

    _check_list(issues, "capabilities", config.capabilities, MAX_CAPABILITIES)
    for i, cap in enumerate(config.capabilities):
        if not _CAPABILITY_RE.match(cap):
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
        if not access.path.startswith("/") or "/../" in f"{access.path}/" or "\x00" in access.path:
            issues.append(ConfigIssue(f"filesystem_access[{i}].path", "must be an absolute path without '..'"))
        if access.mode not in FILESYSTEM_MODES:
            issues.append(ConfigIssue(f"filesystem_access[{i}].mode", f"must be one of {', '.join(FILESYSTEM_MODES)}"))

    _check_list(issues, "external_apis", config.external_apis)
    for i, url in enumerate(config.external_apis):
        if not _API_RE.match(url):
            issues.append(ConfigIssue(f"external_apis[{i}]", f"{url!r} is not an https:// URL"))
    if config.external_apis and r.network_io_mbps == 0:
        issues.append(ConfigIssue("external_apis", "external APIs are listed but resources.network_io_mbps is 0"))
    if config.workload is not None:
        _validate_workload(issues, config.workload)
    if config.memory is not None:
        _validate_memory(issues, config.memory)
    _validate_schedules(issues, config.schedules)
    _validate_policies(issues, config.policies)
    return issues


MEMORY_STORES = ("markdown", "vector", "kv")
PRIORITIES = ("low", "normal", "high", "critical")


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


def _validate_policies(issues: list[ConfigIssue], policies: tuple[PolicySpec, ...]) -> None:
    import cedarpy

    _check_list(issues, "policies", tuple(p.name for p in policies))
    for i, policy in enumerate(policies):
        try:
            cedarpy.policies_to_json_str(policy.cedar)
        except ValueError as err:
            issues.append(ConfigIssue(f"policies[{i}].cedar", f"is not valid Cedar: {err}"))


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
    if not w.workdir.startswith("/") or "/../" in f"{w.workdir}/" or "\x00" in w.workdir:
        issues.append(ConfigIssue("workload.workdir", "must be an absolute path without '..'"))
