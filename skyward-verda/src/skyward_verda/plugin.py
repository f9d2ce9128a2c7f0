"""Entry point of skyward-verda (group ``skyward``, name ``verda``): registers ``sky.Verda``."""

from __future__ import annotations

from collections.abc import Callable

from skyward.hookspecs import hookimpl
from skyward.provider import ProviderConfig
from skyward_verda.config import Verda


@hookimpl
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    register(Verda)
