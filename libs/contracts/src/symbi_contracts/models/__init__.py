"""The model gateway's contract: the ``budget.<day>-<tenant>`` events (docs/models.md)."""
