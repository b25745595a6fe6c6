"""``symbi console``: serve the operator console on this machine."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI

from symbi_cli.console.app import ConsoleConfig, create_app, end_live_streams
from symbi_cli.console.services import service_urls


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
    config = ConsoleConfig(
        urls=service_urls(home, base_port), keys_dir=keys_dir or home / "keys", state_dir=home / "console"
    )
    typer.echo(f"symbi console on http://{host}:{port}/ (services: {', '.join(sorted(config.urls))})")
    app = create_app(config)
    server = ConsoleServer(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3), app
    )
    server.run()


class ConsoleServer(uvicorn.Server):
    """uvicorn's server that, on Ctrl-C or SIGTERM, first ends the app's open live streams (Server-Sent Events
    never end by themselves), so the console exits at once instead of after the graceful-shutdown timeout."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_live_streams(self.app)
        await super().shutdown(sockets)
