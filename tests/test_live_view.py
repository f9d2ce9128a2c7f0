"""The live view's lines, from events, at several widths (no terminal needed)."""

from __future__ import annotations

import threading

import pytest
from rich.spinner import Spinner

from skyward.events import (
    BatchSubmitted,
    BootstrapCompleted,
    BootstrapProgress,
    BootstrapStarting,
    InstanceLaunching,
    InstanceProvisioned,
    InstanceStopping,
    Metrics,
    TaskFinished,
    TaskSubmitted,
)
from skyward.live_view import LiveView, PoolState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool(nodes: int, clock: Clock, price: float | None = 3.6) -> PoolState:
    state = PoolState(clock=clock)
    state.follow(InstanceLaunching(count=nodes, instance_type="g5.xlarge", provider="aws"))
    for node in range(nodes):
        state.follow(
            InstanceProvisioned(
                f"i-{node}", node, spot=False, provider="aws", price_on_demand=price
            )
        )
    return state


def _view(state: PoolState) -> LiveView:
    return LiveView(state, Spinner("dots"))


def test_bootstrap_steps_and_ready_progress() -> None:
    clock = Clock()
    state = _pool(2, clock)
    state.follow(BootstrapStarting("i-0"))
    state.follow(BootstrapProgress("i-1", "deps"))
    state.follow(BootstrapCompleted("i-0"))
    lines = _view(state).lines(100)
    assert lines[0].startswith("  node 0   ready ")
    assert lines[1].startswith("  node 1   bootstrap: deps ")
    assert lines[2] == "  nodes ready" + "█" * 12 + "░" * 12 + "  1/2"
    assert (
        _view(state).lines(100, unicode=False)[2] == "  nodes ready" + "#" * 12 + "." * 12 + "  1/2"
    )


def test_tasks_load_and_cost() -> None:
    clock = Clock()
    state = _pool(2, clock)
    for node in range(2):
        state.follow(BootstrapCompleted(f"i-{node}"))
    for task in range(1, 5):
        state.follow(TaskSubmitted(task, node=task % 2))
    state.follow(TaskFinished(1, node=1, ok=True, seconds=0.1))
    state.follow(TaskFinished(2, node=0, ok=False, seconds=0.1))
    state.follow(Metrics("i-0", 0, 50.0, 20.0, 1.0, 2.0, gpu_utilization=75.0))
    clock.now += 60  # one minute at 2 x $3.60/h = $0.12
    lines = _view(state).lines(120)
    assert lines[0] == (
        "  node 0   ready                1 in flight     0 done   1 failed  cpu  50%  mem  20%"
        "  gpu  75%"
    )
    assert lines[1].startswith("  node 1   ready                1 in flight     1 done   0 failed")
    assert lines[1].endswith("cpu  --  mem  --  gpu  --")
    assert lines[2] == "  tasks   " + "█" * 12 + "░" * 12 + "  2/4 done, 2 in flight, 1 failed"
    assert lines[3] == "  cost    $0.1200 so far at $7.2000/h, 1m00s"
    # A node stops costing when it is stopped.
    state.follow(InstanceStopping("i-0"))
    clock.now += 60
    assert state.cost_so_far() == pytest.approx(0.18)


def test_narrow_terminal_gets_compact_lines() -> None:
    clock = Clock()
    state = _pool(2, clock, price=None)
    state.follow(BootstrapCompleted("i-0"))
    state.follow(TaskSubmitted(1, node=0))
    lines = _view(state).lines(40)
    assert lines[:3] == [
        "   # state            sent/done load",
        "   0 ready            1/0 cpu --",
        "   1 provisioned      0/0 cpu --",
    ]
    assert all(len(line) <= 40 for line in lines)
    # No price known and no CostUpdate: no cost line at all.
    assert not any("$" in line for line in lines)


def test_many_nodes_are_summed_up() -> None:
    clock = Clock()
    state = _pool(20, clock)
    for node in range(20):
        state.follow(BootstrapCompleted(f"i-{node}"))
    lines = _view(state).lines(100)
    assert sum(line.startswith("  node ") for line in lines) == 7
    assert "  ... 13 more nodes: 13 ready, 0 in flight" in lines


def test_a_gather_shows_its_whole_size_from_the_start() -> None:
    clock = Clock()
    state = _pool(1, clock, price=None)
    state.follow(BatchSubmitted(1000))
    for task in range(1, 9):
        state.follow(TaskSubmitted(task, node=0))
    for task in range(1, 5):
        state.follow(TaskFinished(task, node=0, ok=True, seconds=0.1))
    (tasks,) = [line for line in _view(state).lines(100) if line.startswith("  tasks")]
    assert tasks.endswith("  4/1000 done, 4 in flight, 992 to send")
    assert tasks.count("█") == 0  # 4 of 1000 is not a whole cell of 24 yet


def test_drawing_while_events_arrive_from_other_threads() -> None:
    state = PoolState()
    view = _view(state)

    def node_events(first: int) -> None:
        for node in range(first, first + 100):
            state.follow(InstanceProvisioned(f"i-{node}", node, spot=True, provider="aws"))
            state.follow(TaskSubmitted(node, node))
            state.follow(Metrics(f"i-{node}", node, 1.0, 1.0, 1.0, 1.0))

    threads = [threading.Thread(target=node_events, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        view.lines(100)
    for thread in threads:
        thread.join()
    assert "  ... 393 more nodes: 0 ready, 393 in flight" in view.lines(100)
