"""The ``models.complete`` operation of the agent channel protocol (docs/models.md): one chat completion through
the host's model gateway, as the listener's agent, decided by Cedar with the day's budgets in the context.

``args``: ``model`` (``provider/model`` or a bare name one provider offers) and either ``messages`` (OpenAI
chat messages) or ``prompt`` (one user message), with any other OpenAI field passed on (``max_tokens``,
``temperature`` …). The result is the provider's reply with ``text`` (the first choice's content) added. Not
streamed: a protocol request has one answer; stream with an OpenAI client through the egress proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from symbi_common.decisions import DecisionRecord
from symbi_contracts.agent_protocol import Reply, Request, Result, error
from symbi_contracts.sandbox_agent.events import ActionOutcome

from symbi_sandbox_agent.egress.internal import Caller
from symbi_sandbox_agent.models.errors import ModelError
from symbi_sandbox_agent.models.wire import usage_of
from symbi_sandbox_agent.tool_ops import Serving

if TYPE_CHECKING:
    from symbi_sandbox_agent.models.gateway import ModelGateway

MODEL_OPS = ("models.complete",)
ACTION = "model.invoke"
#: What the protocol answers for each of the gateway's errors.
CODES = {"budget_exceeded": "budget_exceeded", "upstream_failed": "unavailable", "unavailable": "unavailable"}


def chat_body(args: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request of ``models.complete``'s args (``prompt``: one user message)."""
    body = dict(args)
    prompt = body.pop("prompt", None)
    if prompt is not None and "messages" not in body:
        body["messages"] = [{"role": "user", "content": prompt if isinstance(prompt, str) else str(prompt)}]
    body.pop("stream", None)
    return body


def reply_content(reply: dict[str, Any]) -> str | None:
    """The text of a chat reply's first choice, if it has one (whatever else the provider answered)."""
    choices = reply.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


class ModelOps:
    def __init__(self, server: Serving, task_id: str, tier: str, attempt: int, gateway: Any) -> None:
        self.server = server
        self.task_id = task_id
        self.tier = tier
        self.attempt = attempt
        self._gateway = gateway

    async def answer(self, seq: int, request: Request) -> Reply:
        gateway: ModelGateway | None = self._gateway()
        model = str(request.args.get("model", ""))[:200]
        if gateway is None:
            message = "models.complete is not available: no model providers are configured on this host"
            await self.server._record(seq, ACTION, model, {}, None, "failed", f"not_available: {message}")
            return error(request.id, "not_available", message, op=request.op)
        caller = Caller(agent_id=self.server.agent_id, task_id=self.task_id, tier=self.tier, attempt=self.attempt)
        try:
            reply, record = await gateway.complete(caller, chat_body(dict(request.args)))
        except ModelError as err:
            refused: DecisionRecord | None = getattr(err, "record", None)
            outcome: ActionOutcome = "refused" if err.code in ("denied", "budget_exceeded") else "failed"
            await self.server._record(seq, ACTION, model, {}, refused, outcome, f"{err.code}: {err.message}")
            extra = {k: v for k, v in err.details.items() if isinstance(v, str | int | float | bool)}
            return error(request.id, CODES.get(err.code, err.code), err.message, **extra)
        text = reply_content(reply)
        used = usage_of(reply)  # the provider's answer is not trusted to have any shape
        counts = f"{used[0]}+{used[1]}" if used is not None else "?+?"
        detail = f"models.complete {model}: {counts} tokens"
        await self.server._record(seq, ACTION, model, {}, record, "allowed", detail)
        return Result(id=request.id, result={**reply, "text": text})
