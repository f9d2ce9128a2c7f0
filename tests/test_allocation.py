"""allocation=: every accepted spelling, and clear errors for everything else."""

from __future__ import annotations

import pytest

import skyward as sky
from skyward.allocation import (
    AlwaysSpot,
    Cheapest,
    OnDemandAllocation,
    Percent,
    SpotIfAvailable,
    parse_allocation,
)
from skyward.errors import ConfigurationError, SkywardError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("spot-if-available", SpotIfAvailable()),
        ("always-spot", AlwaysSpot()),
        ("spot", AlwaysSpot()),
        ("on-demand", OnDemandAllocation()),
        ("cheapest", Cheapest()),
    ],
)
def test_string_names(name: str, expected: object) -> None:
    strategy = parse_allocation(name)
    assert strategy == expected
    assert type(strategy) is type(expected)


def test_spot_is_an_alias_of_always_spot() -> None:
    assert parse_allocation("spot") == parse_allocation("always-spot")
    assert parse_allocation("spot").name == "always-spot"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("spot-if-available", "spot-if-available"),
        ("always-spot", "always-spot"),
        ("on-demand", "on-demand"),
        ("cheapest", "cheapest"),
    ],
)
def test_parsed_strategy_reports_its_name(name: str, canonical: str) -> None:
    assert parse_allocation(name).name == canonical


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.8, 1.0, 0, 1])
def test_number_is_a_spot_fraction(fraction: float) -> None:
    strategy = parse_allocation(fraction)
    assert isinstance(strategy, Percent)
    assert strategy.spot == float(fraction)
    assert isinstance(strategy.spot, float)


def test_float_shortcut_equals_percent_instance() -> None:
    assert parse_allocation(0.8) == sky.Allocation.Percent(spot=0.8)


def test_namespace_instances() -> None:
    assert parse_allocation(sky.Allocation.SpotIfAvailable()) == SpotIfAvailable()
    assert parse_allocation(sky.Allocation.AlwaysSpot()) == AlwaysSpot()
    assert parse_allocation(sky.Allocation.Cheapest()) == Cheapest()
    percent = parse_allocation(sky.Allocation.Percent(spot=0.8))
    assert isinstance(percent, Percent)
    assert percent.spot == 0.8


def test_on_demand_is_used_without_a_call() -> None:
    # The docs write ``sky.Allocation.OnDemand`` with no parentheses.
    strategy = parse_allocation(sky.Allocation.OnDemand)
    assert isinstance(strategy, OnDemandAllocation)
    assert strategy == parse_allocation("on-demand")


def test_instance_is_returned_as_is() -> None:
    percent = Percent(spot=0.3)
    assert parse_allocation(percent) is percent


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (sky.Allocation.SpotIfAvailable, SpotIfAvailable()),
        (sky.Allocation.AlwaysSpot, AlwaysSpot()),
        (sky.Allocation.Cheapest, Cheapest()),
        (OnDemandAllocation, OnDemandAllocation()),
    ],
)
def test_classes_passed_uninstantiated(cls: type, expected: object) -> None:
    strategy = parse_allocation(cls)
    assert strategy == expected
    assert isinstance(strategy, cls)


@pytest.mark.parametrize(
    "value",
    [1.5, -0.1, True, False, "sometimes", None, "Spot", "", float("nan"), [0.8], object()],
)
def test_bad_values_raise_configuration_error(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_allocation(value)
    assert info.value.field == "allocation"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SkywardError)
    assert str(info.value).startswith("allocation:")


@pytest.mark.parametrize("spot", [1.5, -0.1, 2])
def test_percent_out_of_range_fails_at_construction(spot: float) -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.Allocation.Percent(spot=spot)
    assert info.value.field == "allocation"


@pytest.mark.parametrize("spot", ["most", None])
def test_percent_with_a_non_number_names_the_field(spot: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        sky.Allocation.Percent(spot=spot)  # type: ignore[arg-type]
    assert info.value.field == "allocation"


def test_unknown_name_error_lists_the_valid_names() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_allocation("sometimes")
    message = str(info.value)
    for name in ("spot-if-available", "always-spot", "on-demand", "cheapest"):
        assert name in message


def test_strategies_are_frozen_and_hashable() -> None:
    percent = Percent(spot=0.5)
    with pytest.raises(AttributeError):
        percent.spot = 0.9  # type: ignore[misc]
    assert len({Percent(spot=0.5), Percent(spot=0.5), AlwaysSpot(), AlwaysSpot()}) == 2


def test_build_spec_uses_the_same_parser() -> None:
    from skyward.spec import build_spec

    assert build_spec(allocation="spot").allocation == AlwaysSpot()
    assert build_spec().allocation == SpotIfAvailable()
    with pytest.raises(ConfigurationError) as info:
        build_spec(allocation="sometimes")
    assert info.value.field == "allocation"
