"""``symbi agent``: Register and inspect agents through the lifecycle API.

``symbi agent register FILE`` sends a ``.symbi`` definition (or a ``.json`` configuration) to
``POST /v1/agents`` of the lifecycle service (``--url``, ``$SYMBI_LIFECYCLE_URL``, default port 8081 on
loopback: ``https://`` for a deployment directory as ``--home``, see :mod:`symbi_cli.service_http`) and prints
the agent's state: Ready, or Failed with every problem. It exits 0 only when the agent is Ready.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from symbi_common.telemetry import command_trace, inject_trace

from symbi_cli.credentials import auth_headers
from symbi_cli.dsl_cmd import read_definition
from symbi_cli.errors import CliError
from symbi_cli.service_http import default_service_url, verify

agent_app = typer.Typer(help="Register and inspect agents through the lifecycle API.", no_args_is_help=True)

Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="Lifecycle API (default: $SYMBI_LIFECYCLE_URL or 127.0.0.1:8081, HTTPS for a deployment)"
    ),
]


def lifecycle_url(url: str | None, home: Path | None = None) -> str:
    """``url``, else ``$SYMBI_LIFECYCLE_URL``, else the lifecycle service's default port in the home's scheme."""
    return (url or os.environ.get("SYMBI_LIFECYCLE_URL") or default_service_url("lifecycle", home)).rstrip("/")


def registration_body(path: Path, agent_id: str | None) -> dict[str, Any]:
    """The register request for a file: ``definition`` for DSL text, ``config`` for JSON."""
    if path.suffix == ".json":
        try:
            body: dict[str, Any] = {"config": json.loads(path.read_text(encoding="utf-8"))}
        except (OSError, ValueError) as err:
            raise typer.BadParameter(f"{path}: {err}") from None
    else:
        from symbi_dsl import DslError

        try:
            body = {"definition": read_definition(path), "file": str(path)}
        except DslError as err:
            raise typer.BadParameter(err.render()) from None
    if agent_id:
        body["agent_id"] = agent_id
    return body


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for issue in errors:
        if issue.get("line"):
            typer.echo(f"{issue.get('file')}:{issue['line']}:{issue['column']}: {issue['message']}", err=True)
            if issue.get("excerpt"):
                typer.echo(issue["excerpt"], err=True)
            if issue.get("hint"):
                typer.echo(f"  hint: {issue['hint']}", err=True)
        else:
            typer.echo(f"{issue['field']}: {issue['message']}", err=True)


@agent_app.command("register")
def register(
    file: Annotated[Path, typer.Argument(help="A definition (.symbi) or a JSON configuration (.json)")],
    agent_id: Annotated[str | None, typer.Option("--id", help="The agent id (default: the service picks one)")] = None,
    url: Url = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Register for another user (X-Symbi-User; admin tokens only)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agent as JSON")] = False,
    home: Annotated[
        Path | None, typer.Option("--home", envvar="SYMBI_HOME", help="Runtime home (its operator.token is sent).")
    ] = None,
) -> None:
    """Register an agent; exit 0 if it is Ready, 1 if it failed or was denied."""
    body = registration_body(file, agent_id)
    headers = {"X-Symbi-User": user} if user else {}
    try:
        headers.update(auth_headers(home))
        base, trust = lifecycle_url(url, home), verify(home)
    except CliError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    with command_trace("cli", "symbi agent register", {"symbi.file": str(file)}) as span:
        inject_trace(headers)  # the lifecycle service's work (compile, decide, activate) joins this trace
        try:
            response = httpx.post(f"{base}/v1/agents", json=body, headers=headers, timeout=30.0, verify=trust)
        except httpx.HTTPError as err:
            response = None
            typer.echo(f"cannot reach the lifecycle service at {base}: {err}", err=True)
        span.set_attribute("http.response.status_code", response.status_code if response is not None else 0)
    if response is None:
        raise typer.Exit(2)
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        typer.echo(f"registration refused ({response.status_code}): {error.get('message', response.text)}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(f"agent {data['id']} ({data['name']} {data['version']}): {data['state']}")
    if data.get("state") == "Failed":
        _print_errors(data.get("errors", []))
        raise typer.Exit(1)
