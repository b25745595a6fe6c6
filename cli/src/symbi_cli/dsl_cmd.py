"""``symbi dsl``: Check and format agent definitions (.symbi files).

``symbi dsl check FILE…`` prints every problem of every file (``file:line:col``, the line with a caret,
a hint) and exits 1 if there is any error. Warnings (what Symbiont accepts but Symbi is stricter about, or
cannot honour) are printed and leave the exit code 0; ``--strict`` makes them errors. ``--json`` prints
the diagnostics as JSON for editors. ``symbi dsl fmt FILE…``
rewrites files in the canonical layout; ``--check`` only reports which files differ (exit 1), for CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from symbi_dsl import Diagnostic, DslError, check, format_source

dsl_app = typer.Typer(help="Check and format agent definitions (.symbi files).", no_args_is_help=True)

Files = Annotated[list[Path], typer.Argument(help="Definition files (.symbi)", show_default=False)]


def read_definition(path: Path) -> str:
    """The text of a definition file; a :class:`DslError` if it cannot be read or is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise DslError(
            [Diagnostic(code="io", message=f"cannot read the file: {err.strerror}", file=str(path))]
        ) from None
    except UnicodeDecodeError as err:
        raise DslError(
            [Diagnostic(code="encoding", message=f"not UTF-8 text (byte {err.start})", file=str(path))]
        ) from None


def check_file(path: Path, *, strict: bool = False) -> tuple[list[Diagnostic], dict[str, Any]]:
    """Every diagnostic (errors and warnings) of one file, and the configurations of its agents when no
    diagnostic is an error."""
    try:
        program = check(read_definition(path), str(path), strict=strict)
    except DslError as err:
        return list(err.diagnostics), {}
    return list(program.warnings), program.configs


@dsl_app.command("check")
def check_cmd(
    files: Files,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diagnostics as JSON")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors")] = False,
) -> None:
    """Parse and validate definitions; exit 1 if any has an error (``--strict``: or a warning)."""
    report: list[dict[str, Any]] = []
    failed = False
    for path in files:
        diagnostics, configs = check_file(path, strict=strict)
        errors = [d for d in diagnostics if d.severity == "error"]
        failed = failed or bool(errors)
        if as_json:
            report.append(
                {
                    "file": str(path),
                    "ok": not errors,
                    "agents": sorted(configs),
                    "diagnostics": [msgspec.to_builtins(d) for d in diagnostics],
                }
            )
        else:
            for d in diagnostics:
                typer.echo(d.render() + "\n", err=True)
            warned = len(diagnostics) - len(errors)
            if errors:
                typer.echo(f"{path}: {len(errors)} error(s), {warned} warning(s)", err=True)
            else:
                more = f", {warned} warning(s)" if warned else ""
                typer.echo(f"{path}: ok ({', '.join(sorted(configs)) or 'no agents'}){more}")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    if failed:
        raise typer.Exit(1)


@dsl_app.command("fmt")
def fmt_cmd(
    files: Files,
    check_only: Annotated[bool, typer.Option("--check", help="Only report files that are not formatted")] = False,
) -> None:
    """Rewrite definitions in the canonical layout (``--check``: change nothing, exit 1 if any would change)."""
    failed = False
    for path in files:
        try:
            source = read_definition(path)
            formatted = format_source(source, str(path))
        except DslError as err:
            typer.echo(err.render() + "\n", err=True)
            failed = True
            continue
        if formatted == source:
            continue
        if check_only:
            typer.echo(f"{path}: not formatted", err=True)
            failed = True
        else:
            path.write_text(formatted, encoding="utf-8")
            typer.echo(f"{path}: formatted")
    if failed:
        raise typer.Exit(1)
