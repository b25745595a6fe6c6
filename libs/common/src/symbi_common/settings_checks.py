"""What makes a setting honest: a key the runtime does not honour, or a value it cannot honour, stops start-up
with a :class:`ConfigError` naming the key, instead of being accepted and ignored.

:data:`UNSUPPORTED` lists the documented keys this runtime has no use for, each with the reason; the other
checks refuse values (or combinations) that nothing would act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from symbi_common.errors import ConfigError

if TYPE_CHECKING:
    from symbi_common.settings import Settings

#: Documented keys that nothing in this runtime would act on: setting one is refused with its reason.
UNSUPPORTED: Mapping[str, str] = {
    "runtime.scheduler_threads": "the scheduler is one asyncio leader per runtime and has no thread pool to size",
    "runtime.message_buffer_size": "messages travel through NATS JetStream, whose limits are the [nats] settings",
    "runtime.gc_interval_ms": "there is no runtime garbage collector to tune (expiry is context.sweep_interval_s)",
}

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
LOCAL_EMBEDDING_DIMENSION = 384


def parse_size(text: str, *, setting: str) -> int:
    """Bytes of a size such as ``"1GB"``, ``"512MiB"`` or ``"1048576"``; :class:`ConfigError` otherwise."""
    m = _SIZE.match(text)
    if m is None:
        raise ConfigError(f'{text!r} is not a size; write e.g. "1GB", "512MB" or a number of bytes', setting=setting)
    return int(m.group(1)) * _UNITS[(m.group(2) or "").upper()]


def _given(tree: Mapping[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def refuse_unsupported(tree: Mapping[str, Any]) -> None:
    """Refuse any key of :data:`UNSUPPORTED` given in the file or the environment (before types are checked)."""
    for dotted, why in UNSUPPORTED.items():
        if _given(tree, dotted):
            node: Any = tree
            for part in dotted.split("."):
                node = node[part]
            name = f"{dotted}.{next(iter(node))}" if isinstance(node, Mapping) and node else dotted
            raise ConfigError(f"not supported: {why}; remove it", setting=name)


def check_settings(s: Settings, given: Mapping[str, Any]) -> None:
    """Refuse values nothing would honour; ``given`` is the tree of keys set in the file or the environment."""
    sec, ctx = s.security, s.context
    if not sec.enforce_policies:
        raise ConfigError(
            "the runtime never runs without policy; to change what is allowed, change the policy set",
            setting="security.enforce_policies",
        )
    if not sec.audit_enabled:
        raise ConfigError(
            "every event is signed into the audited stream; this cannot be turned off", setting="security.audit_enabled"
        )
    if sec.audit_storage != "jetstream":
        raise ConfigError(
            f"{sec.audit_storage!r} is not available; the audit trail is the signed JetStream event stream "
            '("jetstream")',
            setting="security.audit_storage",
        )
    if sec.crypto_provider != "libsodium":
        raise ConfigError(
            f'{sec.crypto_provider!r} is not available: signatures (Ed25519) come from libsodium; use "libsodium"',
            setting="security.crypto_provider",
        )
    if s.runtime.mode == "production" and s.policy.enforcement == "allow-all":
        raise ConfigError('production mode refuses enforcement "allow-all"', setting="policy.enforcement")
    if s.runtime.max_concurrent_agents < 1:
        raise ConfigError("must be at least 1", setting="runtime.max_concurrent_agents")
    _check_mcp(s)
    parse_size(ctx.context_cache_size, setting="context.context_cache_size")
    if ctx.embedding_provider == "local":
        if _given(given, "context.embedding_dimension") and ctx.embedding_dimension != LOCAL_EMBEDDING_DIMENSION:
            raise ConfigError(
                f"the local embedding model has {LOCAL_EMBEDDING_DIMENSION} dimensions; other dimensions need "
                'embedding_provider = "openai"',
                setting="context.embedding_dimension",
            )
        if _given(given, "context.embedding_model"):
            raise ConfigError('only used with embedding_provider = "openai"', setting="context.embedding_model")
    if ctx.vector_backend != "qdrant":
        for key in ("host", "port"):
            if _given(given, f"context.qdrant.{key}"):
                raise ConfigError(
                    f'only used with vector_backend = "qdrant" (the backend is {ctx.vector_backend!r})',
                    setting=f"context.qdrant.{key}",
                )
    if ctx.vector_backend == "lancedb" and ctx.vector_quantization != "none":
        raise ConfigError(
            'the lancedb backend stores vectors unquantized; use "none"', setting="context.vector_quantization"
        )


def _check_mcp(s: Settings) -> None:
    mcp = s.mcp
    if mcp.tool_verification != "strict":
        raise ConfigError(
            f"{mcp.tool_verification!r} is not available: every tool definition is verified (SchemaPin or an"
            ' operator\'s approval, pinned by hash); the only mode is "strict"',
            setting="mcp.tool_verification",
        )
    if mcp.connection_timeout_s <= 0:
        raise ConfigError("must be more than 0 seconds", setting="mcp.connection_timeout_s")
    if mcp.max_concurrent_connections < 1:
        raise ConfigError("must be at least 1", setting="mcp.max_concurrent_connections")
