"""The model gateway (docs/models.md): an OpenAI-compatible endpoint for sandboxes, with the provider credentials
held by the host, each call decided by Cedar (``model.invoke`` on ``Model::"provider/model"``) with what is
left of the day's budgets in its context, and every call's cost reserved, reconciled or released as
``budget.*`` events. Pure pieces: :mod:`.pricing`, :mod:`.budget`, :mod:`.wire`, :mod:`.errors`."""
