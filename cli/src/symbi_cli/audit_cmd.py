"""``symbi audit``: Export the audit log and verify it offline."""

from __future__ import annotations

import typer

audit_app = typer.Typer(help="Export the audit log and verify it offline.", no_args_is_help=True)
