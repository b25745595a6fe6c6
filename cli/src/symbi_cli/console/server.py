"""The console's HTTP server: uvicorn, ending the open live streams first when it stops."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from symbi_cli.console.app import end_live_streams


class ConsoleServer(uvicorn.Server):
    """uvicorn's server that, on Ctrl-C or SIGTERM, first ends the app's open live streams (Server-Sent Events
    never end by themselves), so the console exits at once instead of after the graceful-shutdown timeout."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_live_streams(self.app)
        await super().shutdown(sockets)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until interrupted."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    ConsoleServer(config, app).run()
