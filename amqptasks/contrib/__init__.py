"""Integrations with other frameworks (each imports its framework; nothing here is imported by the core)."""
