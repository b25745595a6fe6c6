"""Symbi shared foundation."""
