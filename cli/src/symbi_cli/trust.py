"""What a CLI check of the audit log trusts besides the root-signed key registry: the log's origin and witnesses.

``symbi audit verify`` and ``symbi run``'s receipt take the same flags — ``--origin``, ``--witness-key``
(repeatable), ``--min-witnesses``, ``--max-age`` — and, for each one not given, the setting the audit
service itself uses (``SYMBI_CONFIG_PATH`` / ``--config`` and ``SYMBI_AUDIT__*``):

- the origin: ``[audit] origin`` (the name the audit service signs its checkpoints under);
- the witnesses: the keys of ``[[audit.witnesses]]``, of which ``[audit] min_witnesses`` must cosign
  (the rule under which the service publishes a checkpoint). With ``--witness-key``, every given key must
  cosign unless ``--min-witnesses`` says fewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from symbi_common.errors import ConfigError
from symbi_common.keyring import KeyRegistry
from symbi_common.settings import load_settings
from symbi_common.settings_sections import AuditSettings
from symbi_tlog.cosign import WitnessKey
from symbi_tlog.errors import CosignatureInvalid
from symbi_tlog.offline import TrustAnchor

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", envvar="SYMBI_CONFIG_PATH", help="The Symbi TOML configuration ([audit] origin, witnesses)."
    ),
]
OriginOption = Annotated[
    str | None, typer.Option("--origin", help="The log's expected origin line (default: [audit] origin).")
]
WitnessKeyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--witness-key",
        help="A trusted witness verifier key (name+keyid+base64); repeatable (default: [[audit.witnesses]] keys).",
    ),
]
MinWitnessesOption = Annotated[
    int | None,
    typer.Option(
        "--min-witnesses",
        min=0,
        help="Cosignatures required (default: every --witness-key, else [audit] min_witnesses).",
    ),
]
RootKeyOption = Annotated[
    str | None,
    typer.Option(
        "--root-key",
        help="The root key id you hold (`symbi keys show` prints it): the key registry must be signed by it.",
    ),
]
MinRegistryVersionOption = Annotated[
    int,
    typer.Option("--min-registry-version", min=0, help="Refuse a key registry older than this version."),
]
MaxAgeOption = Annotated[
    float | None,
    typer.Option("--max-age", min=0, help="Seconds: the newest witness cosignature may be at most this old."),
]


def audit_settings(config: Path | None) -> AuditSettings:
    """The ``[audit]`` settings of ``config`` (default: ``SYMBI_CONFIG_PATH``) and the environment."""
    try:
        return load_settings(config).audit
    except ConfigError as err:
        raise typer.BadParameter(f"the configuration: {err}") from None


def trust_anchor(
    registry: KeyRegistry,
    settings: AuditSettings,
    *,
    origin: str | None = None,
    witness_keys: list[str] | None = None,
    min_witnesses: int | None = None,
    max_age: float | None = None,
    root_key_id: str | None = None,
    min_registry_version: int = 0,
) -> TrustAnchor:
    """The anchor from the flags, each one not given taken from the audit service's settings (the root key and
    the registry's version: from the flags only)."""
    from_flags = bool(witness_keys)
    specs = list(witness_keys or []) if from_flags else [w.key for w in settings.witnesses]
    where = "--witness-key" if from_flags else "[[audit.witnesses]] key"
    try:
        witnesses = tuple(WitnessKey.parse(k) for k in specs)
    except CosignatureInvalid as err:
        raise typer.BadParameter(f"{where}: {err.message}") from None
    default_k = len(witnesses) if from_flags else settings.min_witnesses
    k = default_k if min_witnesses is None else min_witnesses
    if k > len(witnesses):
        raise typer.BadParameter(f"--min-witnesses {k} but only {len(witnesses)} witness keys ({where}) given")
    if max_age is not None and not witnesses:
        raise typer.BadParameter("--max-age needs witness keys: only a witness's cosignature dates a checkpoint")
    return TrustAnchor(
        registry,
        origin or settings.origin,
        witnesses,
        k,
        max_age,
        root_key_id=root_key_id or "",
        min_registry_version=min_registry_version,
    )
