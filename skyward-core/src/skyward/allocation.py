"""Allocation strategies: how a pool buys machines (spot, on-demand, or a mix)."""

from __future__ import annotations

from typing import ClassVar, Literal, TypeAlias

from attrs import field, frozen

from skyward.errors import ConfigurationError

__all__ = ["Allocation", "AllocationLike", "AllocationStrategy", "parse_allocation"]


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            "allocation", f"spot fraction {value!r} is not a number", "Use e.g. Percent(spot=0.8)"
        )
    return float(value)


def _check_fraction(_: object, __: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigurationError(
            "allocation", f"spot fraction {value!r} is outside 0..1", "Use e.g. Percent(spot=0.8)"
        )


@frozen
class SpotIfAvailable:
    """Try spot; when there is no spot capacity, fall back to on-demand (the default)."""

    name: ClassVar[str] = "spot-if-available"


@frozen
class AlwaysSpot:
    """Spot only; fail when there is no spot capacity."""

    name: ClassVar[str] = "always-spot"


@frozen
class OnDemandAllocation:
    """On-demand only."""

    name: ClassVar[str] = "on-demand"


@frozen
class Cheapest:
    """Compare spot and on-demand prices and take the cheaper."""

    name: ClassVar[str] = "cheapest"


@frozen
class Percent:
    """At least ``spot`` (a fraction 0..1) of the nodes on spot, the rest on-demand."""

    spot: float = field(converter=_fraction, validator=_check_fraction)
    name: ClassVar[str] = "percent"


AllocationStrategy: TypeAlias = (
    SpotIfAvailable | AlwaysSpot | OnDemandAllocation | Cheapest | Percent
)
"""A parsed allocation strategy."""

AllocationName = Literal["spot-if-available", "always-spot", "spot", "on-demand", "cheapest"]
AllocationLike: TypeAlias = AllocationName | float | AllocationStrategy | type
"""What ``allocation=`` accepts: a name, a spot fraction, or a strategy (class or instance)."""


class Allocation:
    """Namespace of strategies: ``sky.Allocation.SpotIfAvailable()``, ``.OnDemand``, ..."""

    SpotIfAvailable = SpotIfAvailable
    AlwaysSpot = AlwaysSpot
    OnDemand: ClassVar[OnDemandAllocation] = OnDemandAllocation()
    Cheapest = Cheapest
    Percent = Percent


_BY_NAME: dict[str, AllocationStrategy] = {
    "spot-if-available": SpotIfAvailable(),
    "always-spot": AlwaysSpot(),
    "spot": AlwaysSpot(),  # providers-aws spelling; DECISIONS.md makes it an alias
    "on-demand": OnDemandAllocation(),
    "cheapest": Cheapest(),
}


def parse_allocation(value: object) -> AllocationStrategy:
    """Turn anything ``allocation=`` accepts into a strategy, or raise ConfigurationError."""
    if isinstance(value, SpotIfAvailable | AlwaysSpot | OnDemandAllocation | Cheapest | Percent):
        return value
    if isinstance(value, type) and value in (
        SpotIfAvailable,
        AlwaysSpot,
        OnDemandAllocation,
        Cheapest,
    ):
        instance: AllocationStrategy = value()
        return instance
    if isinstance(value, bool):
        pass  # a bool is an int; True/False as a fraction is surely a mistake
    elif isinstance(value, int | float):
        return Percent(spot=float(value))
    elif isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    names = ", ".join(f'"{n}"' for n in _BY_NAME)
    raise ConfigurationError(
        "allocation",
        f"{value!r} is not an allocation strategy",
        f"Use one of {names}, a spot fraction like 0.8, or sky.Allocation.Percent(spot=0.8)",
    )
