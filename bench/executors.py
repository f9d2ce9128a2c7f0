"""Process vs thread executor on Local, interleaved in one run (issue 10's ratio).

``python -m bench.executors [calls] [rounds] [batch]``: one Local pool per executor, open
side by side; each round times ``calls`` sequential no-op calls on each (the order
alternates round by round), then a ``batch``-call ``gather`` on each; then single calls
alternate between the two pools call by call (the steadiest comparison on a loaded
machine). Prints the medians and the ratios.
"""

from __future__ import annotations

import statistics
import sys
import time

import skyward as sky


@sky.compute
def noop() -> None:
    return None


@sky.compute
def ident(x: int) -> int:
    return x


def _latency(pool: sky.ComputePool, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        noop() >> pool
    return (time.perf_counter() - start) / calls * 1e6


def _alternating(pools: dict[str, sky.ComputePool], calls: int) -> dict[str, list[float]]:
    """One call on each pool in turn (which goes first alternates): both see the same
    machine at nearly the same moment. Microseconds per call."""
    out: dict[str, list[float]] = {k: [] for k in pools}
    kinds = list(pools)
    for i in range(calls):
        for k in kinds if i % 2 == 0 else kinds[::-1]:
            start = time.perf_counter()
            noop() >> pools[k]
            out[k].append((time.perf_counter() - start) * 1e6)
    return out


def _throughput(pool: sky.ComputePool, calls: int) -> float:
    start = time.perf_counter()
    sky.gather(*(ident(i) for i in range(calls))) >> pool
    return calls / (time.perf_counter() - start)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    kinds = ("process", "thread")
    pools = {
        k: sky.ComputePool(provider=sky.Local(), display="quiet", executor=k, concurrency=1)
        for k in kinds
    }
    for pool in pools.values():
        pool.__enter__()
    try:
        lat: dict[str, list[float]] = {k: [] for k in kinds}
        thr: dict[str, list[float]] = {k: [] for k in kinds}
        for pool in pools.values():  # warm
            _latency(pool, 100)
            _throughput(pool, 300)
        for r in range(rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]
            for k in order:
                lat[k].append(_latency(pools[k], calls))
            for k in order:
                thr[k].append(_throughput(pools[k], batch))
        single = _alternating(pools, calls * rounds)
        sp, st = (statistics.median(single[k]) for k in kinds)
        print(
            f"call by call  process {sp:7.1f} µs  thread {st:7.1f} µs  ratio {sp / st:.2f}x "
            f"(medians of {calls * rounds} calls each, alternating)"
        )
        p, t = (statistics.median(lat[k]) for k in kinds)
        pt, tt = (statistics.median(thr[k]) for k in kinds)
        print(f"round trip  process {p:7.1f} µs  thread {t:7.1f} µs  ratio {p / t:.2f}x")
        print(f"gather {batch}  process {pt:7.0f}/s  thread {tt:7.0f}/s  ratio {pt / tt:.2f}x")
    finally:
        for pool in pools.values():
            pool.__exit__(None, None, None)


if __name__ == "__main__":
    main()
