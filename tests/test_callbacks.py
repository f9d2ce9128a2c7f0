"""compose, emit and use_callback: order, derived events, failures, context scoping."""

from __future__ import annotations

import threading

import pytest

import skyward as sky
from skyward.callbacks import Callback, compose, emit, registered, use_callback
from skyward.events import (
    CostUpdate,
    InfraCreated,
    InfraCreating,
    Metrics,
    PoolStopping,
    SkywardEvent,
)

METRICS = Metrics(
    instance_id="i-0",
    node=0,
    cpu_percent=1.0,
    memory_percent=2.0,
    memory_used_mb=3.0,
    memory_total_mb=4.0,
)
COST = CostUpdate(
    elapsed_seconds=1.0, accumulated_cost=0.1, hourly_rate=0.5, spot_count=0, ondemand_count=1
)


def recorder(seen: list[tuple[str, SkywardEvent]], name: str) -> Callback:
    def callback(event: SkywardEvent) -> None:
        seen.append((name, event))

    return callback


# -- compose ------------------------------------------------------------------------------


def test_compose_calls_each_callback_in_order() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    combined = compose(recorder(seen, "a"), recorder(seen, "b"), recorder(seen, "c"))
    event = InfraCreated(region="us-east-1")

    assert combined(event) is None
    assert seen == [("a", event), ("b", event), ("c", event)]


def test_compose_skips_none_entries() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    combined = compose(None, recorder(seen, "a"), None, recorder(seen, "b"), None)

    combined(InfraCreating())

    assert [name for name, _ in seen] == ["a", "b"]


def test_compose_of_nothing_is_a_harmless_callback() -> None:
    assert compose()(InfraCreating()) is None
    assert compose(None, None)(InfraCreating()) is None


def test_compose_is_available_at_top_level() -> None:
    assert sky.compose is compose
    assert sky.emit is emit
    assert sky.use_callback is use_callback


def test_derived_event_is_delivered_through_the_whole_chain() -> None:
    seen: list[tuple[str, SkywardEvent]] = []

    def first(event: SkywardEvent) -> None:
        seen.append(("first", event))

    def deriver(event: SkywardEvent) -> SkywardEvent | None:
        seen.append(("deriver", event))
        return COST if isinstance(event, Metrics) else None

    def last(event: SkywardEvent) -> None:
        seen.append(("last", event))

    compose(first, deriver, last)(METRICS)

    # Every listener sees both the original event and the derived one, including the
    # listener placed before the one that derived it.
    for name in ("first", "deriver", "last"):
        assert (name, METRICS) in seen
        assert (name, COST) in seen
    assert len(seen) == 6
    # The derived event goes out before the original reaches the rest of the chain.
    assert seen.index(("first", COST)) < seen.index(("last", METRICS))


def test_derived_event_chain_of_several_steps() -> None:
    seen: list[SkywardEvent] = []

    def step(event: SkywardEvent) -> SkywardEvent | None:
        seen.append(event)
        if isinstance(event, InfraCreating):
            return InfraCreated(region="r")
        if isinstance(event, InfraCreated):
            return PoolStopping()
        return None

    compose(step)(InfraCreating())

    assert seen == [InfraCreating(), InfraCreated(region="r"), PoolStopping()]


def test_raising_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, SkywardEvent]] = []

    def broken(event: SkywardEvent) -> None:
        raise RuntimeError("listener exploded")

    combined = compose(recorder(seen, "a"), broken, recorder(seen, "b"))
    event = InfraCreating()

    with caplog.at_level("ERROR", logger="skyward.callbacks"):
        combined(event)  # must not raise

    assert seen == [("a", event), ("b", event)]
    assert "listener exploded" in caplog.text


def test_derived_event_cycle_stops_at_a_bounded_depth() -> None:
    calls: list[SkywardEvent] = []

    def ping_pong(event: SkywardEvent) -> SkywardEvent:
        calls.append(event)
        return InfraCreated(region="b") if isinstance(event, InfraCreating) else InfraCreating()

    compose(ping_pong)(InfraCreating())

    # The cycle was followed for a while (derived events are delivered) but ended.
    assert 2 < len(calls) <= 32


def test_derived_event_cycle_between_two_callbacks_terminates() -> None:
    count = 0

    def echo(event: SkywardEvent) -> SkywardEvent:
        nonlocal count
        count += 1
        return event

    compose(echo, echo)(InfraCreating())

    assert 2 < count < 10_000


# -- emit / use_callback ------------------------------------------------------------------


def test_emit_outside_any_use_callback_reaches_nothing() -> None:
    assert registered() == ()
    emit(InfraCreating())  # no listeners: a no-op, not an error


def test_emit_reaches_callbacks_registered_by_use_callback() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    event = InfraCreated(region="eu")

    with use_callback(recorder(seen, "a"), recorder(seen, "b")):
        emit(event)

    assert seen == [("a", event), ("b", event)]


def test_emit_after_the_block_reaches_nothing() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    with use_callback(recorder(seen, "a")):
        pass

    emit(InfraCreating())

    assert seen == []
    assert registered() == ()


def test_nested_use_callback_stacks_and_restores() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    outer, inner = recorder(seen, "outer"), recorder(seen, "inner")

    with use_callback(outer):
        emit(InfraCreated(region="1"))
        with use_callback(inner):
            assert registered() == (outer, inner)
            emit(InfraCreated(region="2"))
        assert registered() == (outer,)
        emit(InfraCreated(region="3"))
    assert registered() == ()

    assert seen == [
        ("outer", InfraCreated(region="1")),
        ("outer", InfraCreated(region="2")),
        ("inner", InfraCreated(region="2")),
        ("outer", InfraCreated(region="3")),
    ]


def test_use_callback_restores_after_an_exception() -> None:
    seen: list[tuple[str, SkywardEvent]] = []

    with pytest.raises(KeyError), use_callback(recorder(seen, "a")):
        raise KeyError("boom")

    assert registered() == ()
    emit(InfraCreating())
    assert seen == []


def test_emit_delivers_derived_events_to_every_registered_callback() -> None:
    seen: list[tuple[str, SkywardEvent]] = []

    def deriver(event: SkywardEvent) -> SkywardEvent | None:
        return COST if isinstance(event, Metrics) else None

    with use_callback(recorder(seen, "a")), use_callback(deriver, recorder(seen, "b")):
        emit(METRICS)

    assert ("a", COST) in seen
    assert ("b", COST) in seen
    assert ("a", METRICS) in seen
    assert ("b", METRICS) in seen


def test_emit_survives_a_raising_registered_callback() -> None:
    seen: list[tuple[str, SkywardEvent]] = []

    def broken(event: SkywardEvent) -> None:
        raise ValueError("nope")

    with use_callback(broken, recorder(seen, "a")):
        emit(InfraCreating())

    assert seen == [("a", InfraCreating())]


def test_other_threads_do_not_see_this_threads_callbacks() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    in_thread: list[tuple[object, ...]] = []

    def worker() -> None:
        in_thread.append(registered())
        emit(InfraCreating())

    with use_callback(recorder(seen, "main")):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(5)

    assert in_thread == [()]
    assert seen == []


def test_callbacks_registered_in_another_thread_stay_there() -> None:
    seen: list[tuple[str, SkywardEvent]] = []
    registered_inside = threading.Event()
    release = threading.Event()

    def worker() -> None:
        with use_callback(recorder(seen, "thread")):
            emit(InfraCreated(region="thread"))
            registered_inside.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert registered_inside.wait(5)
        assert registered() == ()
        emit(InfraCreated(region="main"))
    finally:
        release.set()
        thread.join(5)

    assert seen == [("thread", InfraCreated(region="thread"))]
