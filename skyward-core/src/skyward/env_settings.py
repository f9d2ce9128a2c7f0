"""Settings read from ``SKYWARD_*`` environment variables, validated like parameters.

An environment variable is a user's input too: ``SKYWARD_HEARTBEAT_TIMEOUT=nan`` or
``-1`` would make agents never expire, so a bad value is a
:class:`~skyward.errors.ConfigurationError` naming the variable, never a silent default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from skyward.errors import ConfigurationError

__all__ = ["env_seconds"]


def env_seconds(
    name: str,
    default: float,
    *,
    least: float = 0.0,
    most: float = 86_400.0,
    environ: Mapping[str, str] | None = None,
) -> float:
    """The number of seconds in ``$name`` (``default`` when unset or empty), which must be
    finite and in ``(least, most]``."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    fix = f"Set {name} to a number of seconds in ({least:g}, {most:g}], or unset it"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(name, f"{raw!r} is not a number", fix) from None
    if not math.isfinite(value) or not least < value <= most:
        raise ConfigurationError(name, f"{raw!r} is out of range", fix)
    return value
