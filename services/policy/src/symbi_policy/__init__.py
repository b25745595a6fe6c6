"""Symbi policy service: Cedar policy sets on the event stream, decisions over NATS and HTTP, what-if."""
