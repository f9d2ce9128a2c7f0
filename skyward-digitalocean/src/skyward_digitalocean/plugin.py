"""Entry point of skyward-digitalocean (group ``skyward``, name ``digitalocean``).

Registers ``sky.DigitalOcean``. pydo is imported only when a pool (or ``skyward down``)
makes the live provider, so ``import skyward`` stays free of it.
"""

from __future__ import annotations

from collections.abc import Callable

from skyward.hookspecs import hookimpl
from skyward.provider import ProviderConfig
from skyward_digitalocean.config import DigitalOcean


@hookimpl
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    register(DigitalOcean)
