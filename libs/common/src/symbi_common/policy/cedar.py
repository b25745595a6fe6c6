"""Cedar policy text: validation against Symbi's schema, and compilation into named, annotated policies.

A policy set arrives as Cedar text. Before it is accepted it must parse and validate against
``schema.cedarschema``; an invalid set is refused with :class:`PolicyRejected`, carrying Cedar's own
message and the line of the offending policy (Cedar reports positions per policy id, not per line, so
the text is split into statements here to map one onto the other).

A compiled set is a list of :class:`CompiledPolicy`, each with a unique internal id
(``<set>/<name>``), the name decisions report (its ``@id``, else ``<set>#<n>``), its effect, its
annotations and its JSON form. Policy sets are combined into one ``cedarpy.PolicySet`` through that
JSON form, so policy ids never depend on the order sets were loaded in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import cedarpy

from symbi_common.errors import ValidationError
from symbi_common.ids import ID_RE
from symbi_common.policy.conditions import conditions_of
from symbi_common.policy.shape import shape_problem

#: A policy-set id is one NATS subject token.
SET_ID_RE = ID_RE
MAX_POLICY_BYTES = 128 * 1024
#: Characters an ``@id`` may not hold: Cedar quotes a policy's id in backticks in its evaluation errors, which
#: the engine reads to find a forbid that could not be evaluated (and so denies).
_BAD_NAME_RE = re.compile(r"[`\x00-\x1f\x7f]")


class PolicyRejected(ValidationError):
    """A policy set does not parse or does not validate against the schema; ``line`` locates the policy."""

    code = "policy_rejected"

    def __init__(self, message: str, *, field: str = "cedar", line: int | None = None, policy: str | None = None):
        super().__init__(message, field=field)
        self.details.update(line=line, policy=policy)
        self.line = line
        self.policy = policy


@cache
def schema_text() -> str:
    """The Cedar schema every policy is validated against."""
    return resources.files("symbi_common.policy").joinpath("schema.cedarschema").read_text()


@cache
def schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(schema_text())


@dataclass(frozen=True, slots=True)
class Statement:
    """One policy statement of a text and the line it starts on (1-based)."""

    text: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """The ``;``-terminated statements of ``text`` with their first lines, skipping strings and ``//`` comments."""
    out: list[Statement] = []
    start, line, first_line = 0, 1, 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif not ch.isspace():
            first_line = first_line or line
            if ch == '"':
                i += 1
                while i < n and text[i] != '"':
                    line += text[i] == "\n"
                    i += 2 if text[i] == "\\" else 1
            elif ch == ";":
                out.append(Statement(text[start : i + 1], first_line))
                start, first_line = i + 1, 0
        i += 1
    if first_line:
        out.append(Statement(text[start:], first_line))
    return out


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy of a set, ready to be combined with the policies of other sets."""

    internal_id: str
    name: str
    effect: str
    annotations: dict[str, str]
    est: dict[str, Any]
    line: int


def _reject_line(statements: list[Statement], index: int | None) -> int | None:
    if index is None or not 0 <= index < len(statements):
        return None
    return statements[index].line


def _parse_error(statements: list[Statement]) -> PolicyRejected:
    """Find the first statement Cedar cannot parse and say where it is."""
    for st in statements:
        try:
            cedarpy.PolicySet.from_str(st.text)
        except ValueError as exc:
            return PolicyRejected(f"line {st.line}: Cedar parse error: {exc}", line=st.line)
    return PolicyRejected("Cedar parse error: the text does not parse as a policy set")


def check_shape(text: str, *, policy: str | None = None) -> None:
    """:class:`PolicyRejected` if ``text`` is nested too deeply or too long a statement for Cedar's parser, which
    would overflow the stack and kill the process (:mod:`symbi_common.policy.shape`). Call it before any
    ``cedarpy`` function parses text."""
    problem = shape_problem(text)
    if problem is not None:
        message, line = problem
        raise PolicyRejected(f"line {line}: {message}", line=line, policy=policy)


def compile_policies(set_id: str, text: str) -> list[CompiledPolicy]:
    """Parse and validate ``text`` as policy set ``set_id``; :class:`PolicyRejected` if it is not acceptable."""
    if not SET_ID_RE.match(set_id):
        raise ValidationError("must be 1-128 letters, digits, '-' or '_'", field="set_id")
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise PolicyRejected(f"is over {MAX_POLICY_BYTES} bytes")
    statements = split_statements(text)
    if not statements:
        raise PolicyRejected("contains no policy")
    check_shape(text)
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError:
        raise _parse_error(statements) from None
    if est.get("templates"):
        raise PolicyRejected("templates (policies with ?principal or ?resource slots) are not supported")
    static: dict[str, dict[str, Any]] = est.get("staticPolicies") or {}
    validation = cedarpy.validate_policies(text, schema())
    if not validation.validation_passed:
        first = validation.errors[0]
        index = _policy_index(first.policy_id)
        line = _reject_line(statements, index)
        name = validation.id_annotations_by_policy_id.get(first.policy_id) or first.policy_id or None
        where = f"line {line}: " if line is not None else ""
        others = f" (and {len(validation.errors) - 1} more)" if len(validation.errors) > 1 else ""
        message = first.error.replace(f"`{first.policy_id}`", f"`{name}`") if name else first.error
        raise PolicyRejected(f"{where}{message}{others}", line=line, policy=name)
    compiled: list[CompiledPolicy] = []
    seen: set[str] = set()
    for cedar_id, policy in sorted(static.items(), key=lambda kv: _policy_index(kv[0]) or 0):
        index = _policy_index(cedar_id) or 0
        annotations = {str(k): str(v) if v is not None else "" for k, v in (policy.get("annotations") or {}).items()}
        name = annotations.get("id") or f"{set_id}#{index}"
        line = _reject_line(statements, index) or 0
        if _BAD_NAME_RE.search(name):
            raise PolicyRejected(
                f"line {line}: a policy's @id may not hold a backtick or a control character", line=line, policy=name
            )
        if name in seen:
            raise PolicyRejected(f"line {line}: two policies are named {name!r}", line=line, policy=name)
        seen.add(name)
        if policy["effect"] == "permit":
            conditions_of(annotations, name)  # a malformed condition annotation is refused here, not at decision time
        compiled.append(
            CompiledPolicy(
                internal_id=f"{set_id}/{name}",
                name=name,
                effect=str(policy["effect"]),
                annotations=annotations,
                est=policy,
                line=line,
            )
        )
    try:  # engines combine sets through the JSON form, whose decoder refuses nesting past 128 levels
        combine(compiled)
    except ValueError:
        raise PolicyRejected(
            "a policy's expression is nested too deeply (too many operators in one chain); split it up"
        ) from None
    return compiled


def _policy_index(cedar_id: str) -> int | None:
    m = re.fullmatch(r"policy(\d+)", cedar_id)
    return int(m.group(1)) if m else None


def combine(policies: list[CompiledPolicy]) -> cedarpy.PolicySet:
    """One Cedar policy set of ``policies``, each under its internal id."""
    doc = {"staticPolicies": {p.internal_id: p.est for p in policies}, "templates": {}, "templateLinks": []}
    return cedarpy.PolicySet.from_json_str(json.dumps(doc))
