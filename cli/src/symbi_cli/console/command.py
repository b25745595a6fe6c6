"""``symbi console``: serve the operator console on this machine.

The web stack (FastAPI, uvicorn, the templates) is imported when the command runs, not when ``symbi`` starts:
every other command would pay for it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def console(
    home: Annotated[Path, typer.Option("--home", envvar="SYMBI_HOME", help="The runtime's directory.")] = Path(
        ".symbi"
    ),
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8090,
    base_port: Annotated[
        int | None, typer.Option("--base-port", help="The services' base port (default: from `symbi up`'s state).")
    ] = None,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", envvar="SYMBI_KEYS_DIR", help="Keyring with the signed registry.")
    ] = None,
) -> None:
    """Serve the operator console in the browser: agents, tasks, live events, audit proofs, policy."""
    from symbi_cli.console.app import ConsoleConfig, create_app
    from symbi_cli.console.server import serve
    from symbi_cli.console.services import service_urls
    from symbi_cli.errors import CliError
    from symbi_cli.service_http import verify

    try:
        config = ConsoleConfig(
            urls=service_urls(home, base_port),
            keys_dir=keys_dir or home / "keys",
            state_dir=home / "console",
            verify=verify(home),
        )
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"symbi console on http://{host}:{port}/ (services: {', '.join(sorted(config.urls))})")
    serve(create_app(config), host, port)
