"""Settings: one typed object per service, from a TOML file plus ``SYMBI_*`` environment variables.

Precedence: defaults < TOML file (``SYMBI_CONFIG_PATH`` or ``--config``) < environment. Any section
key can be set as ``SYMBI_<SECTION>__<KEY>`` (e.g. ``SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS=50``); the
documented short names (``SYMBI_LOG_LEVEL``, ``SYMBI_NATS_URL``, ``SYMBIONT_VECTOR_BACKEND`` …)
map onto their keys. A bad or unknown setting fails start-up with a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from symbi_common.errors import ConfigError
from symbi_common.settings_checks import check_settings, refuse_unsupported
from symbi_common.settings_env import env_overrides, merge_trees, refuse_env
from symbi_common.settings_sandbox import EgressSettings, McpSettings, ModelsSettings, SandboxSettings
from symbi_common.settings_sections import (
    AuditSettings,
    ContextSettings,
    DatabaseSettings,
    EventSettings,
    KeysSettings,
    NatsSettings,
    PolicySettings,
    RuntimeSettings,
    SchedulerSettings,
    Section,
    SecuritySettings,
    ServiceSettings,
    TelemetrySettings,
)


class Settings(Section):
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
    mcp: McpSettings = msgspec.field(default_factory=McpSettings)

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

    def decision_spool_dir(self) -> Path:
        """``policy.log_spool_dir``, or one directory per deployment under the system's temporary directory."""
        if self.policy.log_spool_dir:
            return Path(self.policy.log_spool_dir)
        deployment = hashlib.sha256(f"{self.nats.url}\n{Path(self.keys.dir).resolve()}".encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "symbi-decision-spool" / deployment

    def root_public_key_path(self, service: str | None = None) -> Path:
        base = self.service_keys_dir(service) if service else Path(self.keys.dir)
        return Path(self.keys.root_public_key_path or base / "root.pub")


_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]+)`")


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
    tree = merge_trees(tree, env_overrides(env))
    refuse_env(env)
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
