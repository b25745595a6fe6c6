"""``symbi tools``: MCP tool servers and their tools, through the sandbox-agent's operator API.

``add`` registers a server (``rm`` removes one) (an image pinned by digest + command over stdio, run in a sandbox without network;
or a streamable-HTTP URL) with the SchemaPin domain its tools must be signed for; ``list`` and ``show`` print
each tool's status, pin, SchemaPin verification and poisoning flags; ``approve`` and ``revoke`` decide what
agents may call. The sandbox-agent's API is ``--url``, ``$SYMBI_SANDBOX_URL``, default port 8085 on
loopback (``https://`` for a deployment directory as ``--home``, see :mod:`symbi_cli.service_http`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import typer
from rich.console import Console
from rich.table import Table

from symbi_cli.credentials import auth_headers
from symbi_cli.errors import CliError
from symbi_cli.service_http import default_service_url, verify

tools_app = typer.Typer(
    help="MCP tool servers and their tools: add, rm, list, show, approve, revoke.", no_args_is_help=True
)

Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="Sandbox-agent API (default: $SYMBI_SANDBOX_URL or 127.0.0.1:8085, HTTPS for a deployment)"
    ),
]
Home = Annotated[
    Path | None, typer.Option("--home", envvar="SYMBI_HOME", help="Runtime home (its operator.token is sent).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the answer as JSON")]


def sandbox_url(url: str | None, home: Path | None = None) -> str:
    """``url``, else ``$SYMBI_SANDBOX_URL``, else the sandbox-agent's default port in the home's scheme."""
    return (url or os.environ.get("SYMBI_SANDBOX_URL") or default_service_url("sandbox-agent", home)).rstrip("/")


def _request(method: str, url: str | None, path: str, home: Path | None, body: Any = None) -> Any:
    """The JSON answer; exit 2 if the API cannot be reached, 1 if it refused (its typed error printed)."""
    try:
        headers = auth_headers(home)
        base, trust = sandbox_url(url, home), verify(home)
    except CliError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    try:
        response = httpx.request(method, f"{base}{path}", json=body, headers=headers, timeout=120.0, verify=trust)
    except httpx.HTTPError as err:
        typer.echo(f"cannot reach the sandbox-agent at {base}: {err}", err=True)
        raise typer.Exit(2) from None
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        typer.echo(
            f"{error.get('code', 'error')} ({response.status_code}): {error.get('message', response.text)}", err=True
        )
        raise typer.Exit(1)
    return data


def _table(tools: list[dict[str, Any]]) -> None:
    table = Table("tool", "status", "pin", "SchemaPin", "flags")
    for t in tools:
        table.add_row(t["name"], t["status"], t["pin"][:19], t["verification"], ", ".join(t["flags"]) or "-")
    Console(width=200).print(table)


@tools_app.command("add")
def add(
    server: Annotated[str, typer.Argument(help="The server's name (a-z 0-9 _ -): its tools are SERVER.TOOL")],
    image: Annotated[str, typer.Option("--image", help="Image pinned by digest (sha256:… or name@sha256:…)")] = "",
    command: Annotated[list[str] | None, typer.Option("--command", help="The command in the image (repeat)")] = None,
    server_url: Annotated[str, typer.Option("--server-url", help="A streamable-HTTP server's URL instead")] = "",
    domain: Annotated[str, typer.Option("--domain", help="The SchemaPin domain its tools must be signed for")] = "",
    tier: Annotated[
        str,
        typer.Option("--tier", help="tier1 (runc) or tier2 (gVisor); default and minimum: the risk assessment's"),
    ] = "",
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for the server (repeat)")] = None,
    url: Url = None,
    home: Home = None,
    as_json: AsJson = False,
) -> None:
    """Register a server and list the tools it offers (each pending until approved)."""
    pairs = [e.partition("=") for e in env or []]
    if any(not sep or not key for key, sep, _ in pairs):
        raise typer.BadParameter("--env takes KEY=VALUE")
    body = {
        "server": server,
        "transport": "http" if server_url else "stdio",
        "image": image,
        "command": list(command or []),
        "url": server_url,
        "domain": domain,
        "tier": tier,
        "env": {key: value for key, _, value in pairs},
    }
    data = _request("POST", url, "/v1/tools/servers", home, body)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        sandbox = data["sandbox"]
        factors = ", ".join(sandbox["risk_factors"]) or "no risk factors"
        typer.echo(f"{server}: {sandbox['tier']} (assessed {sandbox['assessed_tier']}: {factors})")
        _table(data["tools"])


@tools_app.command("rm")
def remove(
    server: Annotated[str, typer.Argument(help="The server's name")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "",
    url: Url = None,
    home: Home = None,
) -> None:
    """Remove a server: its sandbox is stopped and its tools are unknown; adding the name again starts fresh
    (every tool pending approval again)."""
    data = _request("DELETE", url, f"/v1/tools/servers/{server}?{urlencode({'reason': reason})}", home)
    tools = ", ".join(data["tools"]) or "no tools"
    typer.echo(f"{data['server']}: removed ({tools})")


@tools_app.command("list")
def list_tools(url: Url = None, home: Home = None, as_json: AsJson = False) -> None:
    """Every tool of every registered server, re-read from the servers."""
    data = _request("GET", url, "/v1/tools", home)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        _table(data["tools"])


@tools_app.command("show")
def show(name: Annotated[str, typer.Argument(help="SERVER.TOOL")], url: Url = None, home: Home = None) -> None:
    """One tool: status, pins, SchemaPin verification and key, flags, its server (sandbox tier and the risk
    assessment behind it) and its definition (JSON)."""
    typer.echo(json.dumps(_request("GET", url, f"/v1/tools/{name}", home), indent=2, ensure_ascii=True))


@tools_app.command("approve")
def approve(
    name: Annotated[str, typer.Argument(help="SERVER.TOOL")],
    pin: Annotated[str, typer.Option("--pin", help="The pin you reviewed (`symbi tools show`)")] = "",
    url: Url = None,
    home: Home = None,
) -> None:
    """Approve the tool's definition (the one listed now, which must have the pin given)."""
    data = _request("POST", url, f"/v1/tools/{name}/approve", home, {"pin": pin})
    typer.echo(f"{data['name']}: {data['status']} ({data['approved_pin']})")


@tools_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="SERVER.TOOL")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")] = "",
    url: Url = None,
    home: Home = None,
) -> None:
    """Revoke the tool: no agent may call it until it is approved again."""
    data = _request("POST", url, f"/v1/tools/{name}/revoke", home, {"reason": reason})
    typer.echo(f"{data['name']}: {data['status']}")
