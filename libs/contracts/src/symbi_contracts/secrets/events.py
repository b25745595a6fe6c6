"""``audit.secret_changed``: one change of the secrets store, as the audit service saw it. Pure.

The audit service follows the ``SECRETS`` KV bucket (it reads sealed entries, never holds the secrets key) and
appends one of these on ``evt.audit.secret-<kv sequence>`` for each set or removal, whoever made it. The value
is never in it: not the value, not a hash of it (a hash of a short secret can be guessed).
"""

from __future__ import annotations

from typing import Literal

from symbi_common.events import Event

SecretOperation = Literal["set", "removed"]


class SecretChanged(Event, frozen=True, tag="audit.secret_changed", kw_only=True):
    """A secret was set (a new version) or removed (every version purged)."""

    name: str
    operation: SecretOperation
    #: The version set (0 for a removal).
    version: int = 0
    #: Who set it, as the writer recorded it (empty for a removal: the bucket does not say).
    changed_by: str = ""
    #: The secrets key it is sealed with (empty for a removal).
    key_id: str = ""
    #: The ``SECRETS`` bucket's stream sequence of the change: the audit aggregate's id is derived from it.
    kv_sequence: int
    #: When the bucket stored the change (RFC 3339, UTC).
    changed_at: str = ""


def secret_change_id(kv_sequence: int) -> str:
    """The audit aggregate id of the change at ``kv_sequence``: one aggregate per change, so a replay is a no-op."""
    return f"secret-{kv_sequence}"
