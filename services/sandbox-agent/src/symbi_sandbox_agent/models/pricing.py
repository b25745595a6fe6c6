"""Token estimates and price arithmetic of model calls. Pure.

A call reserves, before it is sent, the most it may cost: its prompt's estimated tokens plus the completion
tokens it allows (``max_tokens``), priced at the model's input and output prices. The estimate errs high
(a token per three bytes of UTF-8, plus a few per message) so that the reconciliation with the usage the
provider reports gives back rather than charges more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Bytes of UTF-8 per estimated token (real tokenisers average about four for English).
BYTES_PER_TOKEN = 3
#: Tokens counted for each chat message's framing (role, separators).
TOKENS_PER_MESSAGE = 4
MICRO_PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per million input and output tokens."""

    input_per_mtok: int = 0
    output_per_mtok: int = 0


@dataclass(frozen=True, slots=True)
class Spend:
    """Tokens and money (micro-dollars)."""

    tokens: int = 0
    micro_usd: int = 0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.tokens + other.tokens, self.micro_usd + other.micro_usd)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.tokens - other.tokens, self.micro_usd - other.micro_usd)


def text_tokens(text: str) -> int:
    """The estimated tokens of ``text``: :func:`byte_tokens` of its UTF-8 bytes."""
    return byte_tokens(len(text.encode("utf-8", "replace")))


def byte_tokens(size: int) -> int:
    """The estimated tokens of ``size`` bytes of text: one per :data:`BYTES_PER_TOKEN`, rounded up."""
    return -(-size // BYTES_PER_TOKEN)


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):  # parts: {"type": "text", "text": …}; other parts are counted by their JSON
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += text_tokens(part["text"])
            else:
                total += text_tokens(repr(part))
        return total
    return 0 if content is None else text_tokens(repr(content))


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    """The estimated prompt tokens of a chat completion request (its messages, tools and their framing)."""
    messages = body.get("messages") or []
    total = 3
    for message in messages if isinstance(messages, list) else []:
        total += TOKENS_PER_MESSAGE
        if isinstance(message, dict):
            total += _content_tokens(message.get("content"))
            for key in ("name", "tool_calls", "function_call"):
                if key in message:
                    total += text_tokens(repr(message[key]))
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += text_tokens(repr(body[key]))
    return total


def embedding_input_tokens(body: dict[str, Any]) -> int:
    """The estimated tokens of an embeddings request's ``input`` (a string, strings or token arrays)."""
    given = body.get("input")
    if isinstance(given, str):
        return text_tokens(given)
    if isinstance(given, list):
        total = 0
        for item in given:
            if isinstance(item, str):
                total += text_tokens(item)
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return total
    return 0


def cost(price: Price, input_tokens: int, output_tokens: int) -> int:
    """What the tokens cost in micro-dollars, rounded up (a call never costs less than its share)."""
    numerator = input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok
    return -(-numerator // MICRO_PER_MILLION)


def reservation(price: Price, prompt_tokens: int, max_completion_tokens: int) -> Spend:
    """The most a call may cost: its prompt estimate plus every completion token it allows."""
    return Spend(
        prompt_tokens + max_completion_tokens,
        cost(price, prompt_tokens, max_completion_tokens),
    )
