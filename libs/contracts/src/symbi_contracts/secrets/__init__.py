"""The secrets store's audit trail (docs/secrets.md): the event each change of a secret becomes, never its value."""
