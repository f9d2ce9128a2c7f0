"""CostTracker: metering instances from launch to stop, with a fake clock."""

from __future__ import annotations

import threading

import pytest

from skyward.callbacks import Callback, compose
from skyward.cost import CostTracker
from skyward.events import (
    CostFinal,
    CostUpdate,
    InstanceProvisioned,
    InstanceStopping,
    Metrics,
    SkywardEvent,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def provisioned(
    instance_id: str,
    *,
    spot: bool,
    on_demand: float | None,
    spot_price: float | None = None,
    node: int = 0,
) -> InstanceProvisioned:
    return InstanceProvisioned(
        instance_id=instance_id,
        node=node,
        spot=spot,
        provider="test",
        price_on_demand=on_demand,
        price_spot=spot_price,
    )


def metrics(node: int = 0) -> Metrics:
    return Metrics(
        instance_id=f"i-{node}",
        node=node,
        cpu_percent=10.0,
        memory_percent=20.0,
        memory_used_mb=100.0,
        memory_total_mb=1000.0,
    )


def test_spot_and_ondemand_over_half_an_hour() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    assert tracker(provisioned("i-spot", spot=True, on_demand=3.0, spot_price=1.0)) is None
    assert tracker(provisioned("i-od", spot=False, on_demand=2.0, node=1)) is None
    clock.advance(1800)

    snap = tracker.snapshot()
    assert snap.elapsed_seconds == pytest.approx(1800)
    assert snap.accumulated_cost == pytest.approx(1.5)
    assert snap.hourly_rate == pytest.approx(3.0)
    assert (snap.spot_count, snap.ondemand_count) == (1, 1)

    final = tracker.final()
    assert isinstance(final, CostFinal)
    assert final.total_cost == pytest.approx(1.5)
    assert final.total_seconds == pytest.approx(1800)
    assert final.savings_vs_ondemand == pytest.approx(1.0)
    assert final.hourly_rate == pytest.approx(3.0)
    assert (final.spot_count, final.ondemand_count) == (1, 1)


def test_final_is_stable_once_taken() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    tracker(provisioned("i-1", spot=False, on_demand=2.0))
    clock.advance(3600)
    first = tracker.final()
    clock.advance(3600)
    assert tracker.final() == first
    assert first.total_cost == pytest.approx(2.0)


def test_updates_are_throttled_by_interval() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock, update_interval=30.0)
    tracker(provisioned("i-1", spot=False, on_demand=3.6))

    first = tracker(metrics())
    assert isinstance(first, CostUpdate)
    clock.advance(10)
    assert tracker(metrics()) is None
    clock.advance(19.9)
    assert tracker(metrics(1)) is None
    clock.advance(0.1)
    second = tracker(metrics())
    assert isinstance(second, CostUpdate)
    assert second.elapsed_seconds == pytest.approx(30.0)
    assert second.accumulated_cost == pytest.approx(0.03)
    assert tracker(metrics()) is None


def test_stopped_instance_stops_accruing() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    tracker(provisioned("i-a", spot=False, on_demand=1.0))
    tracker(provisioned("i-b", spot=True, on_demand=4.0, spot_price=2.0, node=1))
    clock.advance(1800)
    tracker(InstanceStopping(instance_id="i-a"))
    clock.advance(1800)

    snap = tracker.snapshot()
    # i-a: 1 $/h for 0.5 h; i-b: 2 $/h for 1 h.
    assert snap.accumulated_cost == pytest.approx(2.5)
    assert snap.hourly_rate == pytest.approx(2.0)
    assert (snap.spot_count, snap.ondemand_count) == (1, 0)

    # A second stop, or a stop for an unknown instance, changes nothing.
    tracker(InstanceStopping(instance_id="i-a"))
    tracker(InstanceStopping(instance_id="i-unknown"))
    final = tracker.final()
    assert final.total_cost == pytest.approx(2.5)
    assert final.total_seconds == pytest.approx(3600)
    assert final.hourly_rate == pytest.approx(3.0)
    assert (final.spot_count, final.ondemand_count) == (1, 1)
    assert final.savings_vs_ondemand == pytest.approx(2.0)


def test_repeated_provisioned_event_does_not_restart_meter() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    tracker(provisioned("i-1", spot=False, on_demand=1.0))
    clock.advance(1800)
    tracker(provisioned("i-1", spot=False, on_demand=1.0))
    clock.advance(1800)
    assert tracker.final().total_cost == pytest.approx(1.0)


def test_zero_and_unknown_prices_cost_nothing() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    tracker(provisioned("local-0", spot=False, on_demand=0.0))
    tracker(provisioned("local-1", spot=False, on_demand=None, node=1))
    clock.advance(7200)
    final = tracker.final()
    assert final.total_cost == 0.0
    assert final.hourly_rate == 0.0
    assert final.savings_vs_ondemand == 0.0
    assert (final.spot_count, final.ondemand_count) == (0, 2)


def test_unknown_ondemand_price_claims_no_savings() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    tracker(provisioned("i-spot", spot=True, on_demand=None, spot_price=1.0))
    tracker(provisioned("i-nospot", spot=True, on_demand=5.0, spot_price=None, node=1))
    clock.advance(3600)
    final = tracker.final()
    assert final.total_cost == pytest.approx(1.0)
    assert final.savings_vs_ondemand == pytest.approx(0.0)


def test_no_instances() -> None:
    tracker = CostTracker(clock=FakeClock())
    snap = tracker.snapshot()
    assert snap == CostUpdate(0.0, 0.0, 0.0, 0, 0)
    final = tracker.final()
    assert final.total_cost == 0.0
    assert final.total_seconds == 0.0


def test_derived_update_flows_through_compose() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    seen: list[SkywardEvent] = []

    def record(event: SkywardEvent) -> None:
        seen.append(event)

    chain: Callback = compose(tracker, record)
    chain(provisioned("i-1", spot=False, on_demand=1.0))
    clock.advance(60)
    chain(metrics())
    assert {type(e) for e in seen} == {InstanceProvisioned, Metrics, CostUpdate}


def test_thread_safe_under_concurrent_events() -> None:
    clock = FakeClock()
    tracker = CostTracker(clock=clock, update_interval=0.0)
    count = 200

    def launch(start: int) -> None:
        for i in range(start, start + count):
            tracker(provisioned(f"i-{i}", spot=i % 2 == 0, on_demand=2.0, spot_price=1.0))
            tracker(metrics())

    threads = [threading.Thread(target=launch, args=(k * count,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    clock.advance(3600)
    final = tracker.final()
    assert final.spot_count + final.ondemand_count == 4 * count
    assert final.total_cost == pytest.approx(4 * count * 1.5)
