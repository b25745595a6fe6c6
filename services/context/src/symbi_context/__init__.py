"""Symbi context service. Not built yet: this package exists so the workspace is complete and later work only fills it."""
