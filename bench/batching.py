"""Calls batched per connection (issue 12): a gather of no-op calls on 2 Local nodes,
with the client holding a batch's calls back into a few writes ("batched") and without
("one write per call", as before), alternating round by round in one run.

``python -m bench.batching [calls] [rounds] [executor]``: prints calls/s per round and
the medians, with how many writes each gather took.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator

import skyward as sky
from skyward import wire


@sky.compute
def noop(x: int) -> int:
    return x


@contextlib.contextmanager
def _not_holding() -> Iterator[None]:
    yield


def _writes(pool: sky.ComputePool) -> int:
    cluster = pool._cluster
    assert cluster is not None
    return sum(c._writer.writes for c in cluster.clients if c._writer is not None)


def _gather(pool: sky.ComputePool, calls: int, batched: bool) -> tuple[float, int]:
    holding = wire.holding
    if not batched:
        wire.holding = _not_holding  # type: ignore[assignment]
    try:
        before = _writes(pool)
        start = time.perf_counter()
        sky.gather(*(noop(i) for i in range(calls))) >> pool
        rate = calls / (time.perf_counter() - start)
        return rate, _writes(pool) - before
    finally:
        wire.holding = holding  # type: ignore[assignment]


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    executor = sys.argv[3] if len(sys.argv) > 3 else "process"
    rates: dict[bool, list[float]] = {True: [], False: []}
    writes: dict[bool, list[int]] = {True: [], False: []}
    with sky.ComputePool(provider=sky.Local(), nodes=2, display="quiet", executor=executor) as pool:
        _gather(pool, 500, True)  # warm
        _gather(pool, 500, False)
        for r in range(rounds):
            for batched in (True, False) if r % 2 == 0 else (False, True):
                rate, count = _gather(pool, calls, batched)
                rates[batched].append(rate)
                writes[batched].append(count)
                label = "batched" if batched else "unbatched"
                print(f"round {r} {label:9} {rate:8.0f} calls/s  {count} writes", flush=True)
    for batched in (False, True):
        label = "batched" if batched else "one write per call"
        print(
            f"{label:20} median {statistics.median(rates[batched]):8.0f} calls/s, "
            f"{statistics.median(writes[batched]):.0f} client writes per gather of {calls}"
        )


if __name__ == "__main__":
    main()
