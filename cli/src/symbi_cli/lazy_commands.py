"""The ``symbi`` command's sub-commands, each imported only when it runs.

Every sub-command module brings its own libraries (the web stack, the NATS and HTTP clients, OpenTelemetry,
the DSL parser); importing them all made every ``symbi`` call, even ``symbi keys show``, start in about two
seconds. The group below knows the sub-commands by name and imports one when it is invoked (or all of them for
``symbi --help``, which lists their help)."""

from __future__ import annotations

import importlib

import typer
import typer.main
from typer import _click as click  # the click typer carries and builds its commands with
from typer.core import TyperGroup

#: Sub-command name → ``module:attribute``: a :class:`typer.Typer` (a group of commands) or a command function.
LAZY_COMMANDS: dict[str, str] = {
    "status": "symbi_cli.status_cmd:status",
    "run": "symbi_cli.run_cmd:run",
    "console": "symbi_cli.console.command:console",
    "keys": "symbi_cli.keys:keys_app",
    "nats": "symbi_cli.nats_cmd:nats_app",
    "events": "symbi_cli.events:events_app",
    "audit": "symbi_cli.audit_cmd:audit_app",
    "dsl": "symbi_cli.dsl_cmd:dsl_app",
    "agent": "symbi_cli.agent_cmd:agent_app",
    "task": "symbi_cli.task_cmd:task_app",
    "token": "symbi_cli.token_cmd:token_app",
    "tools": "symbi_cli.tools_cmd:tools_app",
    "witness": "symbi_cli.witness_cmd:witness_app",
    "bus": "symbi_cli.bus_cmd:bus_app",
    "secrets": "symbi_cli.secrets_cmd:secrets_app",
    "deploy": "symbi_cli.deploy_cmd:deploy_app",
}


def load_command(name: str) -> click.Command:
    """The click command of sub-command ``name`` (its module imported now)."""
    module, _, attribute = LAZY_COMMANDS[name].partition(":")
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):  # a group, even of one command (as `add_typer` makes it)
        command: click.Command = typer.main.get_group(target)
    else:  # a single command: a one-command app is that command
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A typer group whose :data:`LAZY_COMMANDS` are imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            self.commands[cmd_name] = load_command(cmd_name)
        return super().get_command(ctx, cmd_name)
