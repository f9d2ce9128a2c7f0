"""Provider selection and offer ranking, with small fake providers and real plugins."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import attrs
import pytest

import skyward
import skyward as sky
from skyward import plugins
from skyward.errors import ConfigurationError
from skyward.offers import Offer
from skyward.selection import (
    check_selection,
    offers_for,
    rank_offers,
    select_available,
    select_cheapest,
    select_first,
)
from skyward.spec import ComputeSpec, build_spec


def offer(
    instance_type: str,
    *,
    on_demand: float | None = 1.0,
    spot: float | None = None,
    available: bool = True,
    vcpus: int = 4,
    memory_gb: float = 16.0,
    accelerators: float = 0,
    region: str = "r1",
    provider: str = "fake",
) -> Offer:
    return Offer(
        provider=provider,
        instance_type=instance_type,
        vcpus=vcpus,
        memory_gb=memory_gb,
        accelerator="A100" if accelerators else None,
        accelerator_count=accelerators,
        region=region,
        price_on_demand=on_demand,
        price_spot=spot,
        available=available,
    )


class FakeProvider:
    """Just enough of a Provider for selection: a name and a fixed list of offers."""

    def __init__(self, name: str, offers: Sequence[Offer]) -> None:
        self.name = name
        self._offers = list(offers)
        self.asked: list[ComputeSpec] = []

    def offers(self, spec: ComputeSpec) -> Sequence[Offer]:
        self.asked.append(spec)
        return list(self._offers)

    def __repr__(self) -> str:
        return f"FakeProvider({self.name!r})"


def types(offers: Sequence[Offer]) -> list[str]:
    return [o.instance_type for o in offers]


@pytest.fixture
def register_plugin() -> Iterator[Callable[[object], None]]:
    """Register plugin objects on a fresh plugin manager; unregister them afterwards."""
    plugins.reset()
    pm = plugins.get_plugin_manager()
    added: list[object] = []

    def register(plugin: object) -> None:
        pm.register(plugin)
        added.append(plugin)

    yield register
    for plugin in added:
        pm.unregister(plugin)
    plugins.reset()


@pytest.fixture
def no_extra_plugins() -> Iterator[None]:
    plugins.reset()
    yield
    plugins.reset()


# -- rank_offers --------------------------------------------------------------------------


def test_available_offers_come_first() -> None:
    offers = [
        offer("cheap-but-gone", on_demand=0.1, available=False),
        offer("pricey", on_demand=5.0),
        offer("mid", on_demand=2.0),
    ]
    assert types(rank_offers(offers, build_spec())) == ["mid", "pricey", "cheap-but-gone"]


def test_spot_if_available_ranks_by_cheapest_price() -> None:
    offers = [
        offer("a", on_demand=1.0, spot=None),
        offer("b", on_demand=2.0, spot=0.3),
        offer("c", on_demand=0.5, spot=0.6),
    ]
    assert types(rank_offers(offers, build_spec())) == ["b", "c", "a"]


def test_cheapest_allocation_ranks_by_cheapest_price() -> None:
    offers = [offer("a", on_demand=1.0, spot=0.9), offer("b", on_demand=3.0, spot=0.2)]
    assert types(rank_offers(offers, build_spec(allocation="cheapest"))) == ["b", "a"]


def test_on_demand_uses_the_on_demand_price() -> None:
    offers = [
        offer("cheap-spot", on_demand=3.0, spot=0.1),
        offer("cheap-on-demand", on_demand=1.0, spot=0.9),
    ]
    assert types(rank_offers(offers, build_spec(allocation="on-demand"))) == [
        "cheap-on-demand",
        "cheap-spot",
    ]
    assert types(rank_offers(offers, build_spec(allocation="spot-if-available"))) == [
        "cheap-spot",
        "cheap-on-demand",
    ]


def test_on_demand_puts_offers_without_on_demand_price_last() -> None:
    offers = [offer("unknown", on_demand=None, spot=0.01), offer("known", on_demand=9.0)]
    assert types(rank_offers(offers, build_spec(allocation="on-demand"))) == ["known", "unknown"]


@pytest.mark.parametrize("allocation", ["always-spot", "spot"])
def test_always_spot_drops_offers_without_a_spot_price(allocation: str) -> None:
    offers = [
        offer("no-spot", on_demand=0.1, spot=None),
        offer("spot-expensive", on_demand=5.0, spot=2.0),
        offer("spot-cheap", on_demand=9.0, spot=1.0),
    ]
    ranked = rank_offers(offers, build_spec(allocation=allocation))
    assert types(ranked) == ["spot-cheap", "spot-expensive"]


def test_always_spot_with_no_spot_offers_ranks_nothing() -> None:
    offers = [offer("a", on_demand=1.0), offer("b", on_demand=2.0)]
    assert rank_offers(offers, build_spec(allocation="always-spot")) == []


def test_unknown_prices_rank_after_known_ones() -> None:
    offers = [offer("unknown", on_demand=None), offer("known", on_demand=100.0)]
    assert types(rank_offers(offers, build_spec())) == ["known", "unknown"]


def test_ties_go_to_the_smallest_machine() -> None:
    offers = [
        offer("big-gpu", accelerators=8, vcpus=4, memory_gb=16),
        offer("more-cpu", accelerators=1, vcpus=8, memory_gb=16),
        offer("more-mem", accelerators=1, vcpus=4, memory_gb=64),
        offer("smallest", accelerators=1, vcpus=4, memory_gb=16),
    ]
    assert types(rank_offers(offers, build_spec())) == [
        "smallest",
        "more-mem",
        "more-cpu",
        "big-gpu",
    ]


def test_price_beats_size() -> None:
    offers = [offer("small", vcpus=2, on_demand=2.0), offer("big", vcpus=64, on_demand=1.0)]
    assert types(rank_offers(offers, build_spec())) == ["big", "small"]


def test_rank_offers_does_not_modify_its_input() -> None:
    offers = [offer("b", on_demand=2.0), offer("a", on_demand=1.0)]
    before = list(offers)
    rank_offers(offers, build_spec())
    assert offers == before


# -- selectors ----------------------------------------------------------------------------


def test_select_first_takes_the_first_provider(no_extra_plugins: None) -> None:
    a = FakeProvider("a", [offer("x", on_demand=9.0)])
    b = FakeProvider("b", [offer("y", on_demand=1.0)])
    assert select_first((a, b), build_spec()) is a
    assert select_first((b, a), build_spec()) is b


def test_select_cheapest_compares_best_offers(no_extra_plugins: None) -> None:
    a = FakeProvider("a", [offer("a1", on_demand=3.0), offer("a2", on_demand=2.0)])
    b = FakeProvider("b", [offer("b1", on_demand=1.5), offer("b2", on_demand=8.0)])
    c = FakeProvider("c", [offer("c1", on_demand=2.5)])
    assert select_cheapest((a, b, c), build_spec()) is b
    assert b.asked  # the provider was asked for its offers


def test_select_cheapest_prices_by_allocation(no_extra_plugins: None) -> None:
    spot_cheap = FakeProvider("spot-cheap", [offer("s", on_demand=5.0, spot=0.5)])
    on_demand_cheap = FakeProvider("od-cheap", [offer("o", on_demand=1.0, spot=None)])
    providers = (spot_cheap, on_demand_cheap)
    assert select_cheapest(providers, build_spec(allocation="spot-if-available")) is spot_cheap
    assert select_cheapest(providers, build_spec(allocation="on-demand")) is on_demand_cheap


def test_select_cheapest_skips_providers_without_offers(no_extra_plugins: None) -> None:
    empty = FakeProvider("empty", [])
    priced = FakeProvider("priced", [offer("p", on_demand=50.0)])
    assert select_cheapest((empty, priced), build_spec()) is priced


def test_select_available_takes_the_first_with_capacity(no_extra_plugins: None) -> None:
    none = FakeProvider("none", [])
    gone = FakeProvider("gone", [offer("g", available=False)])
    first_ok = FakeProvider("ok1", [offer("o", available=True)])
    second_ok = FakeProvider("ok2", [offer("o", available=True)])
    assert select_available((none, gone, first_ok, second_ok), build_spec()) is first_ok


def test_select_available_falls_back_to_the_first(no_extra_plugins: None) -> None:
    a = FakeProvider("a", [offer("x", available=False)])
    b = FakeProvider("b", [])
    assert select_available((a, b), build_spec()) is a


def test_select_available_respects_machine(no_extra_plugins: None) -> None:
    a = FakeProvider("a", [offer("m5.large")])
    b = FakeProvider("b", [offer("m5.large"), offer("p5.48xlarge")])
    assert select_available((a, b), build_spec(machine="p5.48xlarge")) is b


def test_top_level_names() -> None:
    assert sky.select_first is select_first
    assert sky.select_cheapest is select_cheapest
    assert sky.select_available is select_available


# -- check_selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "selector"),
    [("first", select_first), ("cheapest", select_cheapest), ("available", select_available)],
)
def test_check_selection_names(name: str, selector: object) -> None:
    assert check_selection(name) is selector


def test_check_selection_accepts_a_function() -> None:
    def prefer_last(providers: tuple[object, ...], spec: ComputeSpec) -> object:
        return providers[-1]

    checked = check_selection(prefer_last)
    assert checked.__wrapped__ is prefer_last  # type: ignore[attr-defined]
    providers = (object(), object())
    assert checked(providers, ComputeSpec()) is providers[-1]  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["fastest", "First", "", None, 3, ["first"]])
def test_check_selection_rejects_others(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_selection(value)
    assert info.value.field == "selection"
    assert isinstance(info.value, ValueError)


# -- offers_for and the adjust_offers hook ------------------------------------------------


class Discount:
    """A negotiated discount on on-demand prices."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.seen: list[tuple[ComputeSpec, list[Offer]]] = []

    @skyward.hookimpl
    def adjust_offers(self, spec: ComputeSpec, offers: Sequence[Offer]) -> list[Offer]:
        self.seen.append((spec, list(offers)))
        return [
            attrs.evolve(
                o,
                price_on_demand=None
                if o.price_on_demand is None
                else o.price_on_demand * self.factor,
            )
            for o in offers
        ]


class DropRegion:
    """A policy that drops one region."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.seen: list[list[Offer]] = []

    @skyward.hookimpl
    def adjust_offers(self, spec: ComputeSpec, offers: Sequence[Offer]) -> list[Offer]:
        self.seen.append(list(offers))
        return [o for o in offers if o.region != self.region]


class LeaveAlone:
    def __init__(self) -> None:
        self.calls = 0

    @skyward.hookimpl
    def adjust_offers(self, spec: ComputeSpec, offers: Sequence[Offer]) -> None:
        self.calls += 1


def test_offers_for_without_plugins_returns_the_providers_offers(
    no_extra_plugins: None,
) -> None:
    offers = [offer("a"), offer("b")]
    provider = FakeProvider("p", offers)
    spec = build_spec(nodes=2)

    result = offers_for(provider, spec)

    assert result == offers
    assert isinstance(result, list)
    assert provider.asked == [spec]


def test_offers_for_applies_adjust_offers(register_plugin: Callable[[object], None]) -> None:
    discount = Discount(0.5)
    register_plugin(discount)
    provider = FakeProvider("p", [offer("a", on_demand=2.0), offer("b", on_demand=None)])
    spec = build_spec()

    result = offers_for(provider, spec)

    assert [o.price_on_demand for o in result] == [1.0, None]
    assert len(discount.seen) == 1
    assert discount.seen[0][0] == spec
    assert types(discount.seen[0][1]) == ["a", "b"]


def test_adjust_offers_returning_none_leaves_offers(
    register_plugin: Callable[[object], None],
) -> None:
    leave = LeaveAlone()
    register_plugin(leave)
    offers = [offer("a"), offer("b")]

    assert offers_for(FakeProvider("p", offers), build_spec()) == offers
    assert leave.calls == 1


def test_adjust_offers_implementations_are_chained(
    register_plugin: Callable[[object], None],
) -> None:
    discount, policy = Discount(0.1), DropRegion("banned")
    register_plugin(discount)
    register_plugin(policy)
    provider = FakeProvider(
        "p",
        [offer("a", on_demand=10.0, region="ok"), offer("b", on_demand=20.0, region="banned")],
    )

    result = offers_for(provider, build_spec())

    assert types(result) == ["a"]
    assert result[0].price_on_demand == pytest.approx(1.0)
    # Each ran once, and whichever ran second received the first one's result.
    assert len(discount.seen) == 1
    assert len(policy.seen) == 1
    discount_ran_second = types(discount.seen[0][1]) == ["a"]
    policy_ran_second = [o.price_on_demand for o in policy.seen[0]] == pytest.approx([1.0, 2.0])
    assert discount_ran_second != policy_ran_second


def test_tryfirst_implementation_feeds_the_others(
    register_plugin: Callable[[object], None],
) -> None:
    class EarlyPolicy:
        @skyward.hookimpl(tryfirst=True)
        def adjust_offers(self, spec: ComputeSpec, offers: Sequence[Offer]) -> list[Offer]:
            return [o for o in offers if o.region != "banned"]

    discount = Discount(1.0)
    register_plugin(discount)
    register_plugin(EarlyPolicy())
    provider = FakeProvider("p", [offer("a", region="ok"), offer("b", region="banned")])

    assert types(offers_for(provider, build_spec())) == ["a"]
    assert types(discount.seen[0][1]) == ["a"]


def test_adjust_offers_changes_what_select_cheapest_picks(
    register_plugin: Callable[[object], None],
) -> None:
    class HalfPriceForB:
        @skyward.hookimpl
        def adjust_offers(self, spec: ComputeSpec, offers: Sequence[Offer]) -> list[Offer]:
            return [
                attrs.evolve(o, price_on_demand=(o.price_on_demand or 0) / 4)
                if o.provider == "b"
                else o
                for o in offers
            ]

    a = FakeProvider("a", [offer("a1", on_demand=1.0, provider="a")])
    b = FakeProvider("b", [offer("b1", on_demand=2.0, provider="b")])
    spec = build_spec(allocation="on-demand")
    assert select_cheapest((a, b), spec) is a

    register_plugin(HalfPriceForB())
    assert select_cheapest((a, b), spec) is b


def test_adjust_offers_implementation_may_take_a_subset_of_arguments(
    register_plugin: Callable[[object], None],
) -> None:
    class OnlyOffers:
        @skyward.hookimpl
        def adjust_offers(self, offers: Sequence[Offer]) -> list[Offer]:
            return [o for o in offers if o.instance_type != "drop-me"]

    register_plugin(OnlyOffers())
    provider = FakeProvider("p", [offer("keep"), offer("drop-me")])

    assert types(offers_for(provider, build_spec())) == ["keep"]


def test_machine_filters_offers(no_extra_plugins: None) -> None:
    provider = FakeProvider(
        "p", [offer("g5.xlarge"), offer("p5.48xlarge"), offer("p5.48xlarge", region="r2")]
    )
    result = offers_for(provider, build_spec(machine="p5.48xlarge"))
    assert types(result) == ["p5.48xlarge", "p5.48xlarge"]
    assert {o.region for o in result} == {"r1", "r2"}
    assert offers_for(provider, build_spec(machine="nope")) == []


def test_machine_filter_applies_after_the_hook(
    register_plugin: Callable[[object], None],
) -> None:
    class AddOffer:
        @skyward.hookimpl
        def adjust_offers(self, spec: ComputeSpec, offers: Sequence[Offer]) -> list[Offer]:
            return [*offers, offer("added-by-plugin"), offer("wanted", region="plugin")]

    register_plugin(AddOffer())
    provider = FakeProvider("p", [offer("wanted"), offer("other")])

    result = offers_for(provider, build_spec(machine="wanted"))

    assert types(result) == ["wanted", "wanted"]
    assert {o.region for o in result} == {"r1", "plugin"}


def test_plugin_is_gone_after_unregistering(register_plugin: Callable[[object], None]) -> None:
    drop = DropRegion("r1")
    register_plugin(drop)
    pm = plugins.get_plugin_manager()
    assert types(offers_for(FakeProvider("p", [offer("a")]), build_spec())) == []

    pm.unregister(drop)
    assert types(offers_for(FakeProvider("p", [offer("a")]), build_spec())) == ["a"]
    pm.register(drop)  # so the fixture's unregister still finds it
