"""``symbi task``: Submit tasks and follow their output."""

from __future__ import annotations

import typer

task_app = typer.Typer(help="Submit tasks and follow their output.", no_args_is_help=True)
