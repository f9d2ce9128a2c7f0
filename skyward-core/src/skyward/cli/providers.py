"""Which providers a command looks at, and each one's live provider built from the
command line (``--region``, ``--host``), or the reason it cannot be built (no credentials,
no hosts given) with the fix."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import attrs

from skyward.plugins import get_registry
from skyward.provider import Provider, ProviderConfig

__all__ = ["CannotUse", "UnknownProvider", "build", "has_regions", "names", "registered"]


class UnknownProvider(Exception):
    """``--provider`` named a provider that is not installed."""


class CannotUse(Exception):
    """A provider cannot be used with the options given (it says what it needs)."""


def registered() -> list[str]:
    return sorted(get_registry().providers)


def names(asked: Sequence[str]) -> list[str]:
    """The providers asked for (every installed one when none is named)."""
    known = registered()
    if not asked:
        return known
    unknown = [n for n in asked if n not in known]
    if unknown:
        raise UnknownProvider(
            f"unknown provider(s) {', '.join(unknown)}; installed: {', '.join(known)}"
        )
    return list(dict.fromkeys(asked))


def _fields(config_class: object) -> dict[str, attrs.Attribute]:  # type: ignore[type-arg]
    if isinstance(config_class, type) and attrs.has(config_class):
        return dict(attrs.fields_dict(config_class))
    return {}


def has_regions(name: str) -> bool:
    """Whether the provider's configuration takes a ``region``."""
    return "region" in _fields(get_registry().providers[name])


def _config(name: str, options: argparse.Namespace) -> ProviderConfig:
    """The provider's configuration: bare, with ``--region`` for providers that have
    regions, or built from ``--host`` for providers told where their machines are."""
    config_class: Callable[..., ProviderConfig] = get_registry().providers[name]
    fields = _fields(config_class)
    kwargs: dict[str, object] = {}
    if "hosts" in fields:
        hosts_given: list[str] = getattr(options, "host", None) or []
        if not hosts_given:
            raise CannotUse(
                f"it needs to be told which machines to look at: --provider {name} "
                "--host user@host[:port] (one --host per machine)"
            )
        from skyward.ssh.hosts import parse_host

        hosts = [parse_host(h) for h in hosts_given]
        identity = getattr(options, "identity", None)
        if identity:
            hosts = [attrs.evolve(h, identity_file=identity) for h in hosts]
        kwargs["hosts"] = hosts
        if "connect_timeout" in fields:
            kwargs["connect_timeout"] = getattr(options, "connect_timeout", 20.0)
        known_hosts = getattr(options, "known_hosts", None)
        if known_hosts:
            kwargs["known_hosts"] = known_hosts
    region = getattr(options, "region", None)
    if region and "region" in fields:
        kwargs["region"] = region
    return config_class(**kwargs)


def build(name: str, options: argparse.Namespace) -> Provider:
    """The live provider, or :class:`CannotUse` saying why not and how to fix it."""
    try:
        return _config(name, options).create()
    except CannotUse:
        raise
    except Exception as error:  # ConfigurationError carries the fix in its message
        raise CannotUse(str(error)) from error
