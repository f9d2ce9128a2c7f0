"""Streamed items, one frame per item against several per frame, in one run:
``python -m bench.stream_batching [rounds]``.

Each round opens a Local pool with ``SKYWARD_STREAM_BATCH=0`` (one frame per item, as
before) and one with batching (the default), interleaved (A B A B), for both executors:
items/s for 100,000 small ints and for 2,000 items of 64 KiB numpy arrays, and how late an
item arrives (the time from its ``yield`` to the consumer, same clock): a lone one (a
generator that computes 20 ms between items, holding the GIL) and the last of a fast run
of 50 followed by 50 ms of such computing. Medians of the rounds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator

import numpy as np

import skyward as sky

SMALL = 100_000
ARRAYS = 2_000


@sky.compute
def ints(n: int) -> Iterator[int]:
    yield from range(n)


@sky.compute
def arrays(n: int) -> Iterator[np.ndarray]:
    block = np.ones(64 * 1024 // 8)
    for _ in range(n):
        yield block


@sky.compute
def slow(n: int, busy: float) -> Iterator[float]:
    for _ in range(n):
        end = time.perf_counter() + busy
        while time.perf_counter() < end:  # computing, the GIL held
            pass
        yield time.time()


@sky.compute
def bursts(runs: int, size: int, busy: float) -> Iterator[float]:
    for _ in range(runs):
        for _ in range(size):
            yield time.time()
        end = time.perf_counter() + busy
        while time.perf_counter() < end:  # a fast run, then computing with the GIL held
            pass


def _rate(iterator: Iterator[object], n: int) -> float:
    start = time.perf_counter()
    assert sum(1 for _ in iterator) == n
    return n / (time.perf_counter() - start)


def measure(batch: bool, executor: str) -> dict[str, float]:
    os.environ["SKYWARD_STREAM_BATCH"] = "1" if batch else "0"  # the agent inherits it
    with sky.ComputePool(provider=sky.Local(), display="quiet", executor=executor) as pool:
        small = _rate(ints(SMALL) >> pool, SMALL)
        big = _rate(arrays(ARRAYS) >> pool, ARRAYS)
        lates = [time.time() - sent for sent in slow(10, 0.02) >> pool]
        arrived = [(time.time(), sent) for sent in bursts(5, 50, 0.05) >> pool]
    ends = [got - sent for got, sent in arrived[49::50]]
    return {
        "ints/s": small,
        "64KiB/s": big,
        "lone ms": 1000 * statistics.median(lates[1:]),
        "run end ms": 1000 * statistics.median(ends),
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for executor in ("process", "thread"):
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(rounds):
            for batch in (False, True):
                runs[batch].append(measure(batch, executor))
        for key in ("ints/s", "64KiB/s", "lone ms", "run end ms"):
            old = statistics.median(r[key] for r in runs[False])
            new = statistics.median(r[key] for r in runs[True])
            print(
                f"{executor:8} {key:8} one per frame {old:>12,.1f}  batched {new:>12,.1f}  "
                f"x{new / old:.2f}"
            )
    os.environ.pop("SKYWARD_STREAM_BATCH", None)


if __name__ == "__main__":
    main()
