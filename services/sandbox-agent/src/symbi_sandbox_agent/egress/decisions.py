"""What the proxy asks Cedar about a connection, and the record it keeps of it. Pure.

Each connection is ``network.connect`` by ``Agent::"<agent>"`` on ``Endpoint::"<host>:<port>"`` with the
context ``host``, ``port``, ``address`` (the resolved one the connection is pinned to) and ``access``
(``proxy``: through ``HTTP(S)_PROXY``; ``gateway``: the SDK's ``http.request``).
"""

from __future__ import annotations

from dataclasses import dataclass

from symbi_common.decisions import DecisionRecord, DecisionRequest, EntityRef

from symbi_sandbox_agent.egress.rules import Target

ACTION = "network.connect"


def connect_request(agent_id: str, target: Target, address: str, access: str) -> DecisionRequest:
    return DecisionRequest(
        principal=EntityRef(type="Agent", id=agent_id or "unknown"),
        action=ACTION,
        resource=EntityRef(type="Endpoint", id=str(target), attrs={"host": target.host, "port": target.port}),
        context={"host": target.host, "port": target.port, "address": address, "access": access},
    )


@dataclass(slots=True)
class Connection:
    """One connection's decision and traffic, recorded once when it ends (or when it is refused)."""

    host: str
    port: int
    method: str
    access: str = "proxy"
    address: str = ""
    outcome: str = "allowed"
    reason: str = ""
    detail: str = ""
    rule: str = ""
    bytes_out: int = 0
    bytes_in: int = 0
    duration_s: float = 0.0
    status: int = 0
    decision: DecisionRecord | None = None


class Refused(Exception):
    """A connection the proxy refuses: the HTTP status it answers and the reason code (:data:`rules.REASONS`)."""

    def __init__(self, status: int, reason: str, message: str, decision: DecisionRecord | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.decision = decision
