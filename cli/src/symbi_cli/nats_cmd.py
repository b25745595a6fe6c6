"""``symbi nats``: the NATS admin's jobs (provision streams and KV buckets before services start)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import nats.errors
import typer
from rich.console import Console
from symbi_common.errors import ConfigError, InfrastructureError
from symbi_common.nats_client import without_credentials
from symbi_common.settings import load_settings

from symbi_cli.provisioning import provision_nats_async, stream_settings

nats_app = typer.Typer(help="NATS administration (needs the admin credential, never given to a service).")


@nats_app.command("provision")
def provision(
    url: Annotated[
        str, typer.Option("--url", envvar="SYMBI_NATS_URL", help="nats://admin:<password>@host:4222")
    ] = "nats://127.0.0.1:4222",
) -> None:
    """Create or update the streams (EVENTS, SNAPSHOTS, AUDIT, WORK) and KV buckets (DATAKEYS, HOSTS, SCHEDULER).

    TLS, replicas and limits come from the settings (``[nats]``, ``SYMBI_NATS_TLS_CA`` …). Idempotent.
    """
    s = load_settings()
    try:
        asyncio.run(
            provision_nats_async(
                url, stream_settings(s), tls_ca=s.nats.tls_ca, tls_cert=s.nats.tls_cert, tls_key=s.nats.tls_key
            )
        )
    except (nats.errors.Error, OSError, TimeoutError, InfrastructureError, ConfigError) as exc:
        why = str(exc) if isinstance(exc, (InfrastructureError, ConfigError)) else repr(exc)
        Console(stderr=True).print(f"[red]error:[/] provisioning at {without_credentials(url)} failed: {why}")
        raise typer.Exit(1) from None
    Console().print(f"streams and KV buckets provisioned at {without_credentials(url)}")
