"""@sky.compute, PendingCompute, PendingBatch and gather, without a pool."""

from __future__ import annotations

import pytest

import skyward as sky


@sky.compute
def add(a: int, b: int = 0) -> int:
    """Adds."""
    return a + b


def test_calling_builds_a_pending_computation_and_runs_nothing() -> None:
    calls: list[int] = []

    @sky.compute
    def record(x: int) -> int:
        calls.append(x)
        return x

    pending = record(1)
    assert isinstance(pending, sky.PendingCompute)
    assert calls == []
    assert pending.args == (1,)
    assert pending.kwargs == {}


def test_local_is_the_original_function() -> None:
    assert add.local(2, b=3) == 5
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert isinstance(add, sky.ComputeFunction)


def test_and_chains_into_a_batch_in_order() -> None:
    batch = add(1) & add(2) & add(3)
    assert isinstance(batch, sky.PendingBatch)
    assert [p.args for p in batch.computations] == [(1,), (2,), (3,)]
    assert len(add(1) & (add(2) & add(3))) == 3


def test_gather_groups_any_number() -> None:
    batch = sky.gather(*(add(i) for i in range(5)))
    assert len(batch) == 5
    assert len(sky.gather()) == 0
    with pytest.raises(TypeError, match="pending computation"):
        sky.gather(add(1), 2)  # type: ignore[arg-type]


def test_sending_to_something_that_is_not_a_pool() -> None:
    with pytest.raises(TypeError, match="ComputePool"):
        add(1) >> 3  # type: ignore[operator]
    with pytest.raises(TypeError, match="ComputePool"):
        add(1) @ "pool"  # type: ignore[operator]


def test_repr_names_the_function() -> None:
    assert "add" in repr(add(1))
    assert "add" in repr(add)
    assert "2" in repr(add(1) & add(2))
