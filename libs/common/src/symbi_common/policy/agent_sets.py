"""An agent's own policies: the ``policy`` blocks of its definition, compiled to Cedar, active while it lives.

The lifecycle service records an agent's configuration — ``AgentConfig.policies``, one
:class:`PolicySpec` per DSL ``policy`` block, already compiled to Cedar — in its ``agent.registered``
event. When the agent becomes Ready (``agent.ready``) the policy service registers them as policy set
``agent-<agent_id>``; a configuration without policies leaves the set holding one that never applies
(:func:`no_policy_text`); when the agent is terminated (``agent.terminated``) the set is retired.

An agent's policies speak for that agent only: a policy whose principal is unconstrained is scoped to
``principal == Agent::"<agent_id>"``, and one that names any other principal is refused — a definition
must not grant (or take away) anything of another agent's. Nor may it permit itself ``secret.read`` (or
every action): secrets are granted by the operator's policy sets (docs/secrets.md).

Erasing the agent shreds its set with it (the set's data key is destroyed): every decision point then reads the
set as :func:`erased_policy_text`, forbidding the agent every action (:mod:`symbi_common.policy.follower`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import cedarpy
from symbi_contracts.lifecycle.config import PolicySpec

from symbi_common.errors import ValidationError
from symbi_common.policy.cedar import PolicyRejected, check_shape, compile_policies

#: The prefix of an agent's own policy set id (``agent-<agent_id>``).
AGENT_SET_PREFIX = "agent-"


def agent_set_id(agent_id: str) -> str:
    return f"{AGENT_SET_PREFIX}{agent_id}"


def agent_of_set(set_id: str) -> str | None:
    """The agent whose own policy set ``set_id`` is (``agent-<agent_id>``), or None for any other set."""
    return set_id[len(AGENT_SET_PREFIX) :] if set_id.startswith(AGENT_SET_PREFIX) else None


def erased_policy_text(agent_id: str) -> str:
    """The set of an agent that was erased (its events, or its own policy set's, can no longer be read): it
    forbids the agent every action. The same text as :func:`symbi_policy.domain.erased_policy_text` writes."""
    return (
        f"// agent {agent_id} was erased: its events can no longer be read\n"
        f'@id("agent-erased")\n@reason("the agent was erased")\n'
        f"forbid (principal == Agent::{json.dumps(agent_id)}, action, resource);\n"
    )


def check_agent_policies(agent_id: str, specs: Sequence[PolicySpec]) -> None:
    """:class:`PolicyRejected` (or :class:`ValidationError`) unless ``specs`` make a set the policy service
    accepts for ``agent_id``: each parses, speaks for the agent only, grants no secret, and the set validates
    against the schema. The lifecycle checks an agent's configuration with it, so that an agent whose own
    policies would be refused never gets Ready."""
    compile_policies(agent_set_id(agent_id), agent_policy_text(agent_id, specs))


def no_policy_text(agent_id: str) -> str:
    """The set of an agent whose configuration has no policies of its own (any more): one policy that never
    applies. The set stays active, so a later configuration with policies updates it again."""
    return (
        f"// agent {agent_id} has no policies of its own\n"
        f'@id("agent-no-policies")\nforbid (principal == Agent::{json.dumps(agent_id)}, action, resource) when {{ false }};\n'
    )


def refused_policy_text(agent_id: str, reason: str) -> str:
    """The set that stands for an agent's own policies the policy service refused: it forbids the agent every
    action (fail closed) until a configuration that is accepted replaces it."""
    why = " ".join(reason.split())[:300]
    return (
        f"// the policies of agent {agent_id} were refused: {why}\n"
        f'@id("agent-policies-refused")\nforbid (principal == Agent::{json.dumps(agent_id)}, action, resource);\n'
    )


def agent_policy_text(agent_id: str, specs: Sequence[PolicySpec]) -> str:
    """The Cedar text of the agent's policy set: every spec, scoped to the agent, each policy named."""
    static: dict[str, Any] = {}
    for spec in specs:
        check_shape(spec.cedar, policy=spec.name)
        try:
            est = json.loads(cedarpy.policies_to_json_str(spec.cedar))
        except ValueError as exc:
            raise PolicyRejected(f"policy {spec.name!r} does not parse: {exc}", policy=spec.name) from None
        policies = list((est.get("staticPolicies") or {}).values())
        if est.get("templates"):
            raise PolicyRejected(f"policy {spec.name!r} is a template; templates are not supported", policy=spec.name)
        for n, policy in enumerate(policies):
            policy["principal"] = _scoped(agent_id, spec.name, policy.get("principal") or {"op": "All"})
            _no_secret_grant(spec.name, policy)
            annotations = policy.setdefault("annotations", {})
            if not annotations.get("id"):
                annotations["id"] = spec.name if len(policies) == 1 else f"{spec.name}#{n}"
            static[f"policy{len(static)}"] = policy
    if not static:
        raise ValidationError("the agent defines no policy", field="policies")
    text: str = cedarpy.policies_from_json_str(
        json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []})
    )
    return text


def _no_secret_grant(name: str, policy: dict[str, Any]) -> None:
    """An agent's own policy may not permit ``secret.read``: secrets are granted by the operator (docs/secrets.md).

    Otherwise whoever may register an agent could give it any secret of the store."""
    if policy.get("effect") != "permit":
        return
    action = policy.get("action") or {"op": "All"}
    # Cedar writes the action scope as {"op": "All"}, {"op": "==", "entity"} or {"op": "in", "entity" | "entities"}
    # (a one-element list becomes "entity"); any other form is refused rather than read as harmless.
    entities = [action["entity"]] if "entity" in action else []
    entities += list(action.get("entities") or [])
    known = action.get("op") in ("==", "in") and entities and all(isinstance(e, dict) for e in entities)
    if not known or any(e.get("id") == "secret.read" for e in entities):
        raise PolicyRejected(
            f"policy {name!r} permits secret.read (or every action): an agent's own policies cannot grant "
            "secrets; the operator grants them in a policy set of its own (docs/secrets.md)",
            policy=name,
        )


def _scoped(agent_id: str, name: str, principal: dict[str, Any]) -> dict[str, Any]:
    own = {"type": "Agent", "id": agent_id}
    op = principal.get("op")
    if op == "All":
        return {"op": "==", "entity": own}
    if op == "is" and principal.get("entity_type") == "Agent" and "in" not in principal:
        return {"op": "==", "entity": own}
    if op == "==" and principal.get("entity") == own:
        return principal
    raise PolicyRejected(
        f"policy {name!r} constrains another principal ({json.dumps(principal)}); "
        f'an agent\'s policies may only apply to Agent::"{agent_id}"',
        policy=name,
    )
