"""What the tool service hands out: a tool as an agent or operator sees it, and a call's result. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Listed:
    """A tool as an agent or operator sees it."""

    name: str
    server: str
    tool: str
    status: str
    pin: str
    verification: str
    flags: tuple[str, ...]
    description: str
    input_schema: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "pin": self.pin,
            "verification": self.verification,
            "flags": list(self.flags),
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass(frozen=True, slots=True)
class Called:
    """A call's result as passed on: the server's content, untouched, with its size and digest."""

    result: dict[str, Any]
    size: int
    digest: str
