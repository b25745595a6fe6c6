"""``symbi dsl``: Check and format agent definitions (.symbi files)."""

from __future__ import annotations

import typer

dsl_app = typer.Typer(help="Check and format agent definitions (.symbi files).", no_args_is_help=True)
