"""Providers built into core: ``Local`` (and ``SSH`` later), registered as plugins."""
