"""The checks of the ``schedule``, ``memory``, ``webhook`` and ``channel`` blocks, and the file-wide
pass that runs them (with the type, function and policy checks) over every declaration."""

from __future__ import annotations

import json
import re
import zoneinfo
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]
from symbi_contracts.lifecycle.config import MEMORY_STORES, PRIORITIES

from symbi_dsl import ast as A
from symbi_dsl.cedar import compile_policy, dotted
from symbi_dsl.declarations import Declarations
from symbi_dsl.values import key_span, keyed_entries, name_span, require_keys, to_json, value_of

RETENTION_S = (3_600.0, 10 * 366 * 86_400.0)  # 1 hour .. 10 years
MEMORY_STORE_BYTES = (1_000_000, 1_000_000_000_000)

WEBHOOK_METHODS = ("GET", "POST", "PUT")
WEBHOOK_PROVIDERS = ("github", "gitlab", "stripe", "slack", "custom")
CHANNEL_PLATFORMS = ("slack", "teams", "mattermost", "discord")
SCHEDULE_KEYS = ("cron", "at", "timezone", "agent", "one_shot", "input", "priority", "description")
MEMORY_KEYS = ("store", "path", "retention", "max_size", "search", "embedding")
SEARCH_KEYS = ("vector_weight", "keyword_weight")
WEBHOOK_KEYS = ("path", "method", "agent", "secret", "provider", "filter", "description")
FILTER_KEYS = ("json_path", "equals", "contains")
CHANNEL_KEYS = ("platform", "workspace", "channels", "agent", "default_agent", "token", "policy", "description")
#: Keys Symbiont reads that Symbi has no counterpart for: accepted, named as not honoured.
UNHONOURED_KEYS = {
    "schedule": ("policy", "audit", "deliver"),
    "channel": ("dlp_profile", "audit_level", "default_deny", "data_classification"),
}


class BlockChecks(Declarations):
    """The file-wide pass: declarations, then each block by its kind (``_schedule``, ``_memory``, …)."""

    def check_declarations(self) -> None:
        for t in self.program.types.values():
            if isinstance(t, A.TypeAlias_):
                self.check_type(t.type)
            else:
                seen: set[str] = set()
                for fname, ftype in t.fields:
                    if fname in seen:
                        self.rep.error("duplicate", f"field {fname!r} is declared twice in type {t.name}", t.span)
                    seen.add(fname)
                    self.check_type(ftype)
        for f in self.program.functions.values():
            self._params(f.params)
            if f.returns is not None:
                self.check_type(f.returns)
        for policy in self.program.policies.values():
            # Compiled once for a placeholder principal, so a top-level policy no agent uses is still checked.
            compile_policy(policy, agent_id="check", reporter=self.rep, describe="policy")
        for (kind, _), block in self.program.blocks.items():
            self._unhonoured(block)
            getattr(self, f"_{kind}")(block)

    def _unhonoured(self, block: A.Block) -> None:
        """Symbiont keys Symbi does not act on, and named policies inside a block, are named (not dropped)."""
        for item in block.entries:
            if isinstance(item, A.Policy):
                self.rep.warn(
                    "unsupported",
                    f"policy {item.name} inside {block.kind} {block.name} is not enforced by Symbi",
                    name_span(item),
                    "move it to the top level and name it with policy: …, or into the agent",
                )
            elif item.key in UNHONOURED_KEYS.get(block.kind, ()):
                self.rep.warn(
                    "unsupported", f"{item.key!r} in {block.kind} {block.name} is not honoured by Symbi", key_span(item)
                )

    def _entries(self, block: A.Block) -> list[A.Entry]:
        skip = UNHONOURED_KEYS.get(block.kind, ())
        return [e for e in block.entries if isinstance(e, A.Entry) and e.key not in skip]

    # --- blocks

    def _schedule(self, block: A.Block) -> dict[str, Any] | None:
        where = f"schedule {block.name}"
        got = keyed_entries(self.rep, self._entries(block), SCHEDULE_KEYS, where, lenient=True)
        spec: dict[str, Any] = {"name": block.name}
        ok = True
        if ("cron" in got) == ("at" in got):  # Symbiont's own rule: exactly one of them
            if "cron" in got:
                self.rep.error("missing", f"{where} has both 'cron' and 'at'", name_span(block), "keep one of them")
            else:
                hint = 'add cron: "0 2 * * *" (or at: …)'
                self.rep.error("missing", f"{where} has neither 'cron' nor 'at'", name_span(block), hint)
            ok = False
        if "agent" not in got:
            self.rep.warn("missing", f"{where} names no agent: it runs nothing", name_span(block), "add agent: …")
            ok = False
        if "at" in got and "cron" not in got:
            self.rep.warn(
                "unsupported",
                "a one-shot 'at' schedule is not run by Symbi",
                key_span(got["at"]),
                "use cron with one_shot: true",
            )
            ok = False
        if "cron" in got:
            cron = self.v.string(value_of(got["cron"]), "a cron expression in quotes")
            if cron is not None and not _valid_cron(cron):
                self.rep.error(
                    "cron",
                    f"{cron!r} is not a valid cron expression",
                    value_of(got["cron"]).span,
                    'five fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *"',
                )
                ok = False
            spec["cron"] = cron
        if "timezone" in got:
            tz = value_of(got["timezone"])
            name = dotted(tz) if isinstance(tz, A.Name) else self.v.string(tz)
            if name is not None and not _valid_zone(name):
                self.rep.error("value", f"{name!r} is not a time zone", tz.span, "use an IANA name like Europe/Berlin")
                ok = False
            spec["timezone"] = name
        if "agent" in got:
            spec["agent"] = self._ref(value_of(got["agent"]), self.program.agents, "agent", lenient=True)
        if "one_shot" in got:
            spec["one_shot"] = self.v.boolean(value_of(got["one_shot"]))
        if "priority" in got:
            spec["priority"] = self.v.word(value_of(got["priority"]), PRIORITIES, "priority")
        if "input" in got:
            raw = value_of(got["input"])
            if isinstance(raw, A.Literal_) and raw.kind == "string":
                spec["input"] = str(raw.value)
            else:
                try:
                    spec["input"] = json.dumps(to_json(raw), separators=(",", ":"))
                except ValueError:
                    self.rep.error("type", "input is a string or a literal record/list", raw.span)
        if "description" in got:
            self.v.string(value_of(got["description"]))
        if not ok or any(v is None for v in spec.values()):
            return None
        return spec

    def _memory(self, block: A.Block) -> dict[str, Any] | None:
        where = f"memory {block.name}"
        got = keyed_entries(self.rep, self._entries(block), MEMORY_KEYS, where, nested=("search",), lenient=True)
        spec: dict[str, Any] = {"name": block.name}
        if "store" in got:
            spec["store"] = self.v.word(value_of(got["store"]), MEMORY_STORES, "store")
        if "path" in got:
            spec["path"] = self.v.string(value_of(got["path"]))
        if "retention" in got:
            spec["retention_s"] = self.v.duration(value_of(got["retention"]), RETENTION_S)
        if "max_size" in got:
            size = self.v.size(value_of(got["max_size"]), MEMORY_STORE_BYTES)
            spec["max_bytes"] = int(size) if size is not None else None
        if "embedding" in got:
            spec["embedding"] = self.v.string(value_of(got["embedding"]))
        if "search" in got:
            value = got["search"].value
            assert isinstance(value, tuple)
            search = keyed_entries(self.rep, value, SEARCH_KEYS, f"{where} search", lenient=True)
            for key, entry in search.items():
                spec[key] = self.v.number(value_of(entry), (0.0, 1.0), "weight")
        return None if any(v is None for v in spec.values()) else spec

    def _webhook(self, block: A.Block) -> None:
        where = f"webhook {block.name}"
        got = keyed_entries(self.rep, self._entries(block), WEBHOOK_KEYS, where, either=("filter",), lenient=True)
        require_keys(self.rep, got, ("path",), where, name_span(block))
        if "agent" not in got:
            self.rep.warn("missing", f"{where} names no agent: nothing handles it", name_span(block), "add agent …")
        if "path" in got:
            path = self.v.string(value_of(got["path"]))
            if path is not None and not re.fullmatch(r"/[A-Za-z0-9/_.-]*", path):
                self.rep.error("value", "a webhook path starts with '/' and has no spaces", value_of(got["path"]).span)
        if "method" in got:
            self.v.word(value_of(got["method"]), WEBHOOK_METHODS, "method")
        if "provider" in got:
            provider = value_of(got["provider"])
            if getattr(provider, "id", getattr(provider, "value", None)) not in WEBHOOK_PROVIDERS:
                # Symbiont reads an unknown provider as "custom".
                self.rep.warn("value", f"provider must be one of {', '.join(WEBHOOK_PROVIDERS)}", provider.span)
        if "agent" in got:
            self._ref(value_of(got["agent"]), self.program.agents, "agent", lenient=True)
        if "secret" in got:
            secret = value_of(got["secret"])
            if isinstance(secret, A.Literal_) and str(secret.value).startswith("vault://"):
                self.rep.warn("type", "write the secret reference without quotes", secret.span, "secret vault://…")
            else:
                self.v.secret(secret)
        if "filter" in got:  # ours: a record of event fields; Symbiont's: a block of json_path/equals/contains
            value = got["filter"].value
            if isinstance(value, tuple):
                keyed_entries(self.rep, value, FILTER_KEYS, f"{where} filter", lenient=True)
            elif not isinstance(value, A.Record):
                self.rep.error("type", 'filter is a record like {event: "push"}', value.span)
        if "description" in got:
            self.v.string(value_of(got["description"]))

    def _channel(self, block: A.Block) -> None:
        where = f"channel {block.name}"
        got = keyed_entries(self.rep, self._entries(block), CHANNEL_KEYS, where, lenient=True)
        require_keys(self.rep, got, ("platform",), where, name_span(block))
        if "agent" in got and "default_agent" in got:
            self.rep.error("duplicate", f"{where} sets both agent and default_agent", key_span(got["default_agent"]))
        agent = got.get("agent") or got.get("default_agent")
        if agent is None:
            self.rep.warn("missing", f"{where} names no agent: nothing answers it", name_span(block), "add agent: …")
        else:
            self._ref(value_of(agent), self.program.agents, "agent", lenient=True)
        if "platform" in got:
            platform = value_of(got["platform"])
            if getattr(platform, "id", getattr(platform, "value", None)) not in CHANNEL_PLATFORMS:
                self.rep.warn("unsupported", f"Symbi connects {', '.join(CHANNEL_PLATFORMS)} only", platform.span)
        if "workspace" in got:
            self.v.string(value_of(got["workspace"]))
        if "channels" in got:
            self.v.strings(value_of(got["channels"]))
        if "token" in got:
            self.v.secret(value_of(got["token"]))
        if "policy" in got:
            self._ref(value_of(got["policy"]), self.program.policies, "policy")
        if "description" in got:
            self.v.string(value_of(got["description"]))


def _valid_cron(expr: str) -> bool:
    if len(expr.split()) not in (5, 6):
        return False
    try:
        return bool(croniter.is_valid(expr))
    except Exception:  # croniter raises a variety of errors for garbage
        return False


def _valid_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
