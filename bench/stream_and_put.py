"""Streams and refs on Local: ``python -m bench.stream_and_put [items] [mib] [calls]``.

A generator of small items (items/s) against the same items returned as one list, and an
array used by many calls through ``sky.put`` against passing it each call (bytes written
by the client, wall time).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import numpy as np

import skyward as sky


@sky.compute
def items(n: int) -> Iterator[int]:
    yield from range(n)


@sky.compute
def as_list(n: int) -> list[int]:
    return list(range(n))


@sky.compute
def total(array: np.ndarray) -> float:
    return float(array[::4096].sum())


def _sent(pool: sky.ComputePool) -> int:
    return sum(c.bytes_sent for c in pool._cluster.clients)  # type: ignore[union-attr]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    with sky.ComputePool(provider=sky.Local(), display="quiet") as pool:
        start = time.perf_counter()
        assert sum(1 for _ in items(n) >> pool) == n
        streamed = time.perf_counter() - start
        start = time.perf_counter()
        assert len(as_list(n) >> pool) == n
        listed = time.perf_counter() - start
        print(
            f"generator of {n} ints: {n / streamed:,.0f} items/s ({streamed:.2f} s); "
            f"one list: {listed:.3f} s"
        )
        array = np.ones(mib * 1024 * 1024 // 8)
        before, start = _sent(pool), time.perf_counter()
        sky.gather(*(total(array) for _ in range(calls))) >> pool
        each = (_sent(pool) - before, time.perf_counter() - start)
        before, start = _sent(pool), time.perf_counter()
        ref = sky.put(array)
        sky.gather(*(total(ref) for _ in range(calls))) >> pool  # type: ignore[arg-type]
        once = (_sent(pool) - before, time.perf_counter() - start)
        ref.release()
        print(
            f"{mib} MiB array x {calls} calls: by value {each[0] / 2**20:,.1f} MiB sent, "
            f"{each[1]:.2f} s; sky.put {once[0] / 2**20:,.1f} MiB sent, {once[1]:.2f} s"
        )


if __name__ == "__main__":
    main()
