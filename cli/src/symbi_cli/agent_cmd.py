"""``symbi agent``: Register and inspect agents through the lifecycle API."""

from __future__ import annotations

import typer

agent_app = typer.Typer(help="Register and inspect agents through the lifecycle API.", no_args_is_help=True)
