"""Entry point of skyward-kubernetes (group ``skyward``, name ``kubernetes``)."""

from __future__ import annotations

from collections.abc import Callable

from skyward.hookspecs import hookimpl
from skyward.provider import ProviderConfig
from skyward_kubernetes.config import Kubernetes


@hookimpl
def register_providers(register: Callable[[type[ProviderConfig]], None]) -> None:
    register(Kubernetes)
