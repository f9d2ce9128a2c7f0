"""TaskSubmitted / TaskFinished: one pair per attempt of every call, from every path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import skyward as sky


@sky.compute
def double(x: int) -> int:
    return 2 * x


@sky.compute
def fail() -> None:
    raise KeyError("no")


@sky.compute(retries=1, retry_on=(ConnectionError,))
def fail_once(path: str) -> str:
    marker = Path(path)
    if not marker.exists():
        marker.write_text("seen")
        raise ConnectionError("first attempt")
    return "second"


def _tasks(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, sky.TaskSubmitted | sky.TaskFinished)]


def test_every_call_is_submitted_then_finished(
    local_pool_factory: Callable[..., sky.ComputePool], events: list[Any], tmp_path: Path
) -> None:
    with local_pool_factory(nodes=2, on_event=events.append) as pool:
        assert sky.gather(*(double(i) for i in range(6))) >> pool == (0, 2, 4, 6, 8, 10)
        submitted = [e for e in events if isinstance(e, sky.TaskSubmitted)]
        finished = [e for e in events if isinstance(e, sky.TaskFinished)]
        assert sorted(e.task for e in submitted) == [1, 2, 3, 4, 5, 6]
        assert sorted(e.task for e in finished) == [1, 2, 3, 4, 5, 6]
        assert all(e.ok and e.seconds >= 0 and e.node in (0, 1) for e in finished)
        assert {e.node for e in submitted} == {0, 1}  # spread over both nodes
        assert [e.calls for e in events if isinstance(e, sky.BatchSubmitted)] == [6]
        assert events.index(sky.BatchSubmitted(6)) < events.index(submitted[0])

        events.clear()
        assert list(pool.map(double, range(5))) == [0, 2, 4, 6, 8]
        assert [e.calls for e in events if isinstance(e, sky.BatchSubmitted)] == [5]
        events.clear()
        assert list(pool.map(double, iter(range(3)))) == [0, 2, 4]  # size unknown: no total
        assert not [e for e in events if isinstance(e, sky.BatchSubmitted)]

        events.clear()
        double(1) @ pool  # pinned to each worker
        assert sorted(
            (e.node, e.worker) for e in _tasks(events) if isinstance(e, sky.TaskSubmitted)
        ) == [
            (0, 0),
            (1, 0),
        ]

        events.clear()
        with pytest.raises(KeyError):
            fail() >> pool
        (done,) = [e for e in events if isinstance(e, sky.TaskFinished)]
        assert not done.ok

        events.clear()
        assert fail_once(str(tmp_path / "marker")) >> pool == "second"
        attempts = [(type(e).__name__, e.attempt, e.task) for e in _tasks(events)]
        task = attempts[0][2]
        assert attempts == [
            ("TaskSubmitted", 1, task),
            ("TaskFinished", 1, task),
            ("TaskSubmitted", 2, task),
            ("TaskFinished", 2, task),
        ]
