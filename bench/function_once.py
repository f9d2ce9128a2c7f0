"""Local warm round trip with the function sent by value on every call vs once per node.

``python -m bench.function_once [calls] [rounds]``: one Local pool per executor; rounds
alternate the two modes (``messages.SEND_FUNCTIONS_ONCE``) so machine load hits both
alike; prints the median of each mode's per-round mean, in microseconds.
"""

from __future__ import annotations

import statistics
import sys
import time

import skyward as sky
from skyward import messages

TABLE = bytes(range(256)) * 256  # 64 KiB a notebook's function might read as a global


@sky.compute
def noop() -> None:
    return None


@sky.compute
def uses_table() -> int:
    return TABLE[0]


def _round(pool: sky.ComputePool, calls: int, fn: sky.ComputeFunction[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn() >> pool
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    for executor in ("process", "thread"):
        with sky.ComputePool(provider=sky.Local(), display="quiet", executor=executor) as pool:
            for fn in (noop, uses_table):
                figures: dict[bool, list[float]] = {False: [], True: []}
                for mode in (False, True):  # warm both paths
                    messages.SEND_FUNCTIONS_ONCE = mode
                    _round(pool, 200, fn)
                for _ in range(rounds):
                    for mode in (False, True):
                        messages.SEND_FUNCTIONS_ONCE = mode
                        figures[mode].append(_round(pool, calls, fn))
                messages.SEND_FUNCTIONS_ONCE = True
                by_value = statistics.median(figures[False])
                once = statistics.median(figures[True])
                print(
                    f"{executor:8} {fn.__name__:10} by value each call: {by_value:7.1f} µs   "
                    f"function once per node: {once:7.1f} µs   ({once / by_value:.2f}x)"
                )


if __name__ == "__main__":
    main()
