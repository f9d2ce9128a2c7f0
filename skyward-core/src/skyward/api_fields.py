"""Loose fields of a cloud API's instance listing, read leniently.

``skyward ls`` and ``skyward down`` show each instance's age and cost so far from what
the listing says; a field that is missing or unreadable leaves that column empty rather
than failing the listing (``skyward down`` relies on it).
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["epoch_seconds", "hourly_price"]


def epoch_seconds(text: object) -> float | None:
    """An API timestamp (ISO 8601, ``Z`` for UTC) in seconds since the epoch; ``None``
    when absent or unreadable."""
    try:
        return datetime.fromisoformat(str(text)).timestamp() if text else None
    except ValueError:
        return None


def hourly_price(value: object) -> float | None:
    """A price as the API sends it (a number or a numeric string); ``None`` when absent
    or unreadable."""
    try:
        return float(value) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
