"""Symbi lifecycle service."""
