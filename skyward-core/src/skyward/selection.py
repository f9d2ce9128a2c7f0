"""Which provider a pool tries first, and which offer of it.

A selector picks the provider to try first; if it fails, the others are tried in the
order given. Within a provider, offers are tried best-first (see :func:`rank_offers`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias, TypeVar, cast

from skyward import plugins
from skyward.allocation import AllocationStrategy, AlwaysSpot, OnDemandAllocation
from skyward.errors import ConfigurationError
from skyward.offers import Offer
from skyward.provider import Provider
from skyward.spec import ComputeSpec

__all__ = [
    "ProviderSelector",
    "SelectionLike",
    "check_selection",
    "offers_for",
    "rank_across",
    "rank_offers",
    "select_available",
    "select_cheapest",
    "select_first",
]

ProviderSelector: TypeAlias = Callable[[tuple[Provider, ...], ComputeSpec], Provider]
"""A custom strategy: given the live providers and the spec, the one to try first."""

_P = TypeVar("_P")

SelectionLike: TypeAlias = Literal["first", "cheapest", "available"] | ProviderSelector


def offers_for(provider: Provider, spec: ComputeSpec) -> list[Offer]:
    """The provider's offers for ``spec`` after every plugin's ``adjust_offers``, matching
    the spec's ``machine`` when one is given."""
    offers: Sequence[Offer] = list(provider.offers(spec))
    hook = plugins.get_plugin_manager().hook.adjust_offers
    # pluggy's own call order (tryfirst first, then the last registered first); each
    # implementation sees the previous one's result.
    for impl in reversed(hook.get_hookimpls()):
        adjusted = cast("Sequence[Offer] | None", plugins.call_impl(impl, spec=spec, offers=offers))
        if adjusted is not None:
            offers = list(adjusted)
    if spec.machine is not None:
        offers = [o for o in offers if o.instance_type == spec.machine]
    return list(offers)


def _price(offer: Offer, allocation: AllocationStrategy) -> float:
    if isinstance(allocation, OnDemandAllocation):
        price = offer.price_on_demand
    elif isinstance(allocation, AlwaysSpot):
        price = offer.price_spot
    else:
        price = offer.cheapest_price
    return math.inf if price is None else price


def _highest_price(offer: Offer, allocation: AllocationStrategy) -> float:
    """The most one machine may cost per hour under ``allocation`` (spot-if-available may
    end up on demand)."""
    if isinstance(allocation, AlwaysSpot):
        price = offer.price_spot
    else:
        price = offer.price_on_demand if offer.price_on_demand is not None else offer.price_spot
    return math.inf if price is None else price


def rank_offers(offers: Sequence[Offer], spec: ComputeSpec) -> list[Offer]:
    """Offers best-first: available, cheapest for the allocation, then the smallest.

    With ``max_hourly_cost``, offers whose whole pool (every node) may cost more per hour
    are dropped; an offer without a price cannot be shown to fit and is dropped too.
    """
    if isinstance(spec.allocation, AlwaysSpot):
        offers = [o for o in offers if o.price_spot is not None or o.price_on_demand == 0]
    cap = spec.max_hourly_cost
    if cap is not None:
        offers = [o for o in offers if _highest_price(o, spec.allocation) * spec.nodes <= cap]
    return sorted(
        offers,
        key=lambda o: (
            not o.available,
            _price(o, spec.allocation),
            o.accelerator_count,
            o.vcpus,
            o.memory_gb,
        ),
    )


def select_first(providers: tuple[Provider, ...], spec: ComputeSpec) -> Provider:
    """The first provider in the list."""
    return providers[0]


def _offers_or_none(provider: Provider, spec: ComputeSpec) -> list[Offer]:
    """A provider whose offers fail (rejected credentials, an outage) has none to rank;
    provisioning then reports its error when it comes to it."""
    try:
        return offers_for(provider, spec)
    except Exception:
        return []


def rank_across(
    offers: Sequence[tuple[_P, Sequence[Offer]]], spec: ComputeSpec
) -> list[tuple[_P, Offer]]:
    """Every provider's offers in one list, best first: available before not, then the
    price for the allocation; a tie goes to the provider given first, and each provider's
    own offers keep :func:`rank_offers`' order. ``selection="cheapest"`` takes the first
    one's provider, and ``skyward offers`` shows this list: one ranking for both."""
    entries = [
        (not offer.available, _price(offer, spec.allocation), index, position, owner, offer)
        for index, (owner, found) in enumerate(offers)
        for position, offer in enumerate(rank_offers(found, spec))
    ]
    entries.sort(key=lambda e: e[:4])
    return [(e[4], e[5]) for e in entries]


def select_cheapest(providers: tuple[Provider, ...], spec: ComputeSpec) -> Provider:
    """The provider whose best offer is cheapest (an available one before any other)."""
    ranked = rank_across([(p, _offers_or_none(p, spec)) for p in providers], spec)
    return ranked[0][0] if ranked else providers[0]


def select_available(providers: tuple[Provider, ...], spec: ComputeSpec) -> Provider:
    """The first provider with an available matching offer."""
    for provider in providers:
        if any(o.available for o in _offers_or_none(provider, spec)):
            return provider
    return providers[0]


_BY_NAME: dict[str, ProviderSelector] = {
    "first": select_first,
    "cheapest": select_cheapest,
    "available": select_available,
}


_SELECTION_FIX = 'Use "first", "cheapest", "available", or a function (providers, spec) -> provider'


def check_selection(value: object) -> ProviderSelector:
    """Validate ``selection=`` into a selector function.

    A custom function must take ``(providers, spec)``; what it returns is checked when the
    pool opens (it must be one of the providers it was given).
    """
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    # A class is callable too (selection=int), but it would return a new object, never
    # one of the providers.
    if not callable(value) or isinstance(value, str | type):
        raise ConfigurationError(
            "selection", f"{value!r} is not a selection strategy", _SELECTION_FIX
        )
    try:
        inspect.signature(value).bind(None, None)
    except TypeError:
        raise ConfigurationError(
            "selection", f"{value!r} does not take (providers, spec)", _SELECTION_FIX
        ) from None
    except ValueError:
        pass  # a builtin without a signature: its result is checked below
    return _checked(value)


def _checked(selector: Callable[..., object]) -> ProviderSelector:
    def select(providers: tuple[Provider, ...], spec: ComputeSpec) -> Provider:
        chosen = selector(providers, spec)
        if not any(chosen is provider for provider in providers):
            raise ConfigurationError(
                "selection",
                f"the selector returned {chosen!r}, not one of the providers it was given",
                "Return one element of the providers tuple",
            )
        return cast("Provider", chosen)

    select.__wrapped__ = selector  # type: ignore[attr-defined]
    return select
