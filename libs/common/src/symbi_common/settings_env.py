"""Settings from the environment: ``SYMBI_<SECTION>__<KEY>`` and the documented short names (:data:`ENV_ALIASES`),
as a tree of overrides laid over the TOML file's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from symbi_common.errors import ConfigError

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
    "SYMBI_HTTP_TLS_CERT": "service.tls_cert",
    "SYMBI_HTTP_TLS_KEY": "service.tls_key",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "telemetry.otlp_endpoint",
    "SYMBIONT_VECTOR_BACKEND": "context.vector_backend",
    "SYMBIONT_VECTOR_HOST": "context.qdrant.host",
    "SYMBIONT_VECTOR_PORT": "context.qdrant.port",
    "SYMBIONT_VECTOR_DATA_PATH": "context.vector_data_path",
    "MCP_SERVER_DISCOVERY": "mcp.discovery_enabled",  # refused: see UNSUPPORTED
}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError("is not a section", setting=p)
        node = child
    node[leaf] = value


def refuse_env(env: Mapping[str, str]) -> None:
    """Refuse a ``SYMBIONT_VECTOR_*`` variable that is not one of the documented ones (a likely typo)."""
    for name in env:
        if name.startswith("SYMBIONT_VECTOR_") and name not in ENV_ALIASES:
            known = ", ".join(sorted(n for n in ENV_ALIASES if n.startswith("SYMBIONT_")))
            raise ConfigError(f"unknown variable; the SYMBIONT_VECTOR_* variables are {known}", setting=name)


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings tree the environment sets: the documented aliases, then ``SYMBI_<SECTION>__<KEY>``."""
    tree: dict[str, Any] = {}
    for name, dotted in ENV_ALIASES.items():
        if name in env and env[name] != "":
            _set(tree, dotted, env[name])
    for name, value in env.items():
        if name.startswith("SYMBI_") and "__" in name:
            dotted = name[len("SYMBI_") :].lower().replace("__", ".")
            _set(tree, dotted, value)
    return tree


def merge_trees(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, section by section (``over`` wins on a key both set)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge_trees(out[k], v)
        else:
            out[k] = v
    return out
