"""What a pool costs: a callback that meters every instance from launch to stop.

:class:`CostTracker` listens to the pool's events. ``InstanceProvisioned`` starts a meter at
the instance's price (spot or on-demand, as launched); ``InstanceStopping`` stops it. On each
``Metrics`` tick it answers with a :class:`~skyward.events.CostUpdate`, at most once per
``update_interval`` seconds, and :meth:`CostTracker.final` closes the books with a
:class:`~skyward.events.CostFinal`. Prices are USD per machine-hour.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from attrs import define

from skyward.events import (
    CostFinal,
    CostUpdate,
    InstanceProvisioned,
    InstanceStopping,
    Metrics,
    SkywardEvent,
)

__all__ = ["CostTracker"]

_SECONDS_PER_HOUR = 3600.0


@define
class _Meter:
    """One instance's meter: its prices and the clock readings it ran between."""

    spot: bool
    price: float
    """What the instance costs per hour, as launched."""
    ondemand_price: float
    """What the same machine costs per hour on demand; ``price`` when either is unknown."""
    started: float
    stopped: float | None = None

    def seconds(self, now: float) -> float:
        end = self.stopped if self.stopped is not None else now
        return max(0.0, end - self.started)


class CostTracker:
    """Meters a pool's instances; a :data:`~skyward.callbacks.Callback`.

    Thread-safe: events may arrive from several threads at once.

    :param clock: monotonic seconds; injectable for tests.
    :param update_interval: least number of seconds between two ``CostUpdate`` events.
    :param budget: the pool's ``max_cost``, reported in ``CostFinal``.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        update_interval: float = 30.0,
        budget: float | None = None,
    ) -> None:
        self._clock = clock
        self._budget = budget
        self._update_interval = update_interval
        self._lock = threading.Lock()
        self._meters: dict[str, _Meter] = {}
        self._first_start: float | None = None
        self._last_update: float | None = None
        self._final: CostFinal | None = None

    def __call__(self, event: SkywardEvent) -> SkywardEvent | None:
        if isinstance(event, InstanceProvisioned):
            self._start(event)
        elif isinstance(event, InstanceStopping):
            self._stop(event.instance_id)
        elif isinstance(event, Metrics):
            return self._tick()
        return None

    def snapshot(self) -> CostUpdate:
        """The running cost now; ``hourly_rate`` and counts cover the instances still running."""
        with self._lock:
            return self._snapshot(self._clock())

    def final(self) -> CostFinal:
        """Stop every meter still running and return the pool's total cost.

        ``hourly_rate`` and counts cover every instance launched. Calling it again returns
        the same result.
        """
        with self._lock:
            if self._final is not None:
                return self._final
            now = self._clock()
            for meter in self._meters.values():
                if meter.stopped is None:
                    meter.stopped = now
            meters = list(self._meters.values())
            hours = [m.seconds(now) / _SECONDS_PER_HOUR for m in meters]
            total = sum(m.price * h for m, h in zip(meters, hours, strict=True))
            ondemand = sum(m.ondemand_price * h for m, h in zip(meters, hours, strict=True))
            spot = sum(1 for m in meters if m.spot)
            self._final = CostFinal(
                total_cost=total,
                total_seconds=self._elapsed(now),
                hourly_rate=sum(m.price for m in meters),
                spot_count=spot,
                ondemand_count=len(meters) - spot,
                savings_vs_ondemand=ondemand - total,
                budget=self._budget,
            )
            return self._final

    # -- internals ------------------------------------------------------------------------

    def _start(self, event: InstanceProvisioned) -> None:
        on_demand = event.price_on_demand
        price = event.price_spot if event.spot else on_demand
        actual = price if price is not None else 0.0
        # Savings are claimed only against prices we know: unknown either side saves nothing.
        reference = on_demand if on_demand is not None and price is not None else actual
        with self._lock:
            if event.instance_id in self._meters:
                return  # already metered: a repeated event must not restart the meter
            now = self._clock()
            self._meters[event.instance_id] = _Meter(
                spot=event.spot,
                price=actual,
                ondemand_price=reference,
                started=now,
            )
            if self._first_start is None:
                self._first_start = now

    def _stop(self, instance_id: str) -> None:
        with self._lock:
            meter = self._meters.get(instance_id)
            if meter is not None and meter.stopped is None:
                meter.stopped = self._clock()

    def _tick(self) -> CostUpdate | None:
        with self._lock:
            now = self._clock()
            last = self._last_update
            if last is not None and now - last < self._update_interval:
                return None
            self._last_update = now
            return self._snapshot(now)

    def _elapsed(self, now: float) -> float:
        return 0.0 if self._first_start is None else max(0.0, now - self._first_start)

    def _snapshot(self, now: float) -> CostUpdate:
        meters = self._meters.values()
        running = [m for m in meters if m.stopped is None]
        spot = sum(1 for m in running if m.spot)
        return CostUpdate(
            elapsed_seconds=self._elapsed(now),
            accumulated_cost=sum(m.price * m.seconds(now) / _SECONDS_PER_HOUR for m in meters),
            hourly_rate=sum(m.price for m in running),
            spot_count=spot,
            ondemand_count=len(running) - spot,
        )
